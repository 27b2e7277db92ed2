"""The API as served (real gunicorn, real worker): slow clients, and no secret in any log."""
from __future__ import annotations

import base64
import json
import os
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import Engine

from tests.conftest import ROOT, TEST_TOKEN, WorkerProcess
from tests.helpers.serving import Gunicorn
from tests.helpers.waiting import wait_for_job
from tests.upstream import ReplayUpstream

pytestmark = [pytest.mark.e2e]


def _get(url: str, timeout: float = 10.0, **kwargs: Any) -> tuple[int, bytes]:
    # Generous by default: a busy machine answers slowly, and only the latency probes (which
    # pass their own timeout) are about speed.
    request = urllib.request.Request(url, **kwargs)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def serve(base_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    """Start gunicorn servers for a test; all are stopped after it."""
    started: list[Gunicorn] = []

    def start(*extra: str, env: dict[str, str] | None = None,
              log_dir: Path | None = None) -> Gunicorn:
        folder = log_dir or tmp_path / f"server-{len(started)}"
        folder.mkdir(parents=True, exist_ok=True)
        full = {**os.environ, **base_env, **(env or {}), "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1"}
        server = Gunicorn(full, folder / "api.log", *extra)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _slow_clients(server: Gunicorn, count: int, stop: threading.Event) -> list[socket.socket]:
    """`count` connections sending a request's headers one line every 0.3 s until `stop`."""
    sockets = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(count)]
    for sock in sockets:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")

    def dribble() -> None:
        line = 0
        while not stop.wait(0.3):
            line += 1
            for sock in sockets:
                try:
                    sock.sendall(b"X-Slow-%d: %d\r\n" % (line, line))
                except OSError:
                    pass

    threading.Thread(target=dribble, daemon=True).start()
    return sockets


def _probe(server: Gunicorn, seconds: float) -> tuple[list[float], int]:
    """/health/live latencies (s) over `seconds`, and how many probes failed or timed out."""
    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            status, _ = _get(f"{server.base}/health/live", timeout=1.5)
            assert status == 200
            latencies.append(time.perf_counter() - started)
        except (OSError, AssertionError):
            failures += 1
        time.sleep(0.05)
    return latencies, failures


def test_slow_and_idle_clients_do_not_freeze_the_api(serve: Callable[..., Gunicorn]) -> None:
    """8 clients sending headers a line at a time and 100 idle connections: /health/live
    keeps answering fast, and the slow ones are closed after the head deadline."""
    from api.serving.worker import HEAD_DEADLINE

    server = serve()
    stop = threading.Event()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
    slow = _slow_clients(server, 8, stop)
    try:
        opened = time.monotonic()
        latencies, failures = _probe(server, 6.0)
        assert failures == 0
        assert len(latencies) >= 20
        assert statistics.median(latencies) < 0.1, latencies
        assert max(latencies) < 1.0, latencies
        # The dribblers never finish their head: closed by the server after HEAD_DEADLINE.
        for sock in slow + idle:
            sock.settimeout(max(0.1, opened + HEAD_DEADLINE + 5 - time.monotonic()))
            try:
                assert sock.recv(1024) == b""
            except ConnectionResetError:
                pass
        assert time.monotonic() - opened < HEAD_DEADLINE + 5
        assert _get(f"{server.base}/health/live")[0] == 200
    finally:
        stop.set()
        for sock in slow + idle:
            sock.close()


def test_plain_sync_workers_freeze_under_the_same_clients(serve: Callable[..., Gunicorn]) -> None:
    """The control: gunicorn's own sync worker class (the old setup) stops answering."""
    server = serve("--worker-class", "sync")
    stop = threading.Event()
    slow = _slow_clients(server, 8, stop)
    try:
        latencies, failures = _probe(server, 4.0)
        assert failures >= 1, latencies
    finally:
        stop.set()
        for sock in slow:
            sock.close()


def test_a_request_sent_in_pieces_is_still_served(serve: Callable[..., Gunicorn]) -> None:
    """A slow but finishing client gets its answer; a POST body is read in full first."""
    server = serve()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for piece in (b"GET /health/", b"live HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
            sock.sendall(piece)
            time.sleep(0.3)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    body = json.dumps({"sources": ["csv"]}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        time.sleep(0.5)
        sock.sendall(body[:5])
        time.sleep(0.5)
        sock.sendall(body[5:])
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401"), answer  # no token: refused, body read whole


# --- secrets in logs ------------------------------------------------------------------------

QUERY_SECRETS = ("QSSECRET1", "QSSECRET2", "QSSECRET3", "QSSECRET4")
BASIC_USER, BASIC_PASSWORD = "aliceuser", "BASICPASS5"
BAD_BEARER = "BADBEARER6"
UPSTREAM_KEY = "CG-UPSTREAMKEY7"


def test_no_secret_reaches_any_log_file(
    clean_db: Engine, serve: Callable[..., Gunicorn], worker_factory: Callable[..., WorkerProcess],
    upstream: ReplayUpstream, csv_dir: Path, tmp_path: Path,
) -> None:
    """A full run, refused requests included: gunicorn's access and error logs, the app's log
    and the worker's log hold none of the token, keys, passwords or Basic user."""
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {"COINGECKO_BASE_URL": upstream.coingecko_base_url, "COINGECKO_API_KEY": UPSTREAM_KEY,
           "COINPAPRIKA_BASE_URL": upstream.coinpaprika_base_url, "CSV_DIR": str(csv_dir),
           "HTTP_MAX_RETRIES": "1", "LOG_LEVEL": "DEBUG"}
    server = serve("--access-logfile", str(logs / "access.log"),
                   "--error-logfile", str(logs / "error.log"), "--log-level", "debug",
                   env=env, log_dir=logs)
    worker_factory(env)
    upstream.add_fault("401", endpoint="coingecko")
    basic = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
    json_headers = {"Content-Type": "application/json"}
    body = json.dumps({"sources": ["coingecko", "csv"]}).encode()
    refused = [
        (f"/jobs?access_token={QUERY_SECRETS[0]}", {}),
        (f"/jobs?token={TEST_TOKEN}", {}),
        ("/jobs", {"Authorization": f"Basic {basic}"}),
        ("/jobs", {"Authorization": f"Bearer {BAD_BEARER}"}),
        (f"/jobs?api_key={QUERY_SECRETS[1]}", {"Authorization": f"Bearer {BAD_BEARER}"}),
    ]
    for path, headers in refused:
        status, _ = _get(server.base + path, data=body, method="POST",
                         headers={**json_headers, **headers})
        assert status in (400, 401, 403), (path, status)
    assert _get(f"{server.base}/data?key={QUERY_SECRETS[2]}")[0] in (200, 422)
    # A request line gunicorn itself refuses: it reaches the error log, not the app.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"GET /data?token={QUERY_SECRETS[3]} HTTP/9.9\r\n\r\n".encode())
        sock.recv(4096)
    status, answer = _get(f"{server.base}/jobs", data=body, method="POST",
                          headers={**json_headers, "Authorization": f"Bearer {TEST_TOKEN}"})
    assert status == 202, answer
    job = wait_for_job(lambda path: json.loads(_get(server.base + path)[1]),
                       json.loads(answer)["id"], timeout=90)
    runs = {r["source"]: r for r in job["runs"]}
    assert runs["coingecko"]["status"] == "failed", job
    assert runs["coingecko"]["error"] == "coingecko: HTTP 401 from upstream"
    assert runs["csv"]["status"] == "succeeded", job
    server.stop()

    secrets = (TEST_TOKEN, *QUERY_SECRETS, BASIC_USER, BASIC_PASSWORD, basic, BAD_BEARER,
               UPSTREAM_KEY)
    files = sorted(p for p in tmp_path.rglob("*.log"))
    names = {p.name for p in files}
    assert {"access.log", "error.log", "api.log", "worker-0.log"} <= names, names
    for path in files:
        content = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in content, (path.name, secret)
    access = (logs / "access.log").read_text()
    assert "POST /jobs?access_token=[REDACTED]" in access
    assert "/data?key=[REDACTED]" in access
    assert "coingecko" in (tmp_path / "worker-0.log").read_text()  # the failure was logged
