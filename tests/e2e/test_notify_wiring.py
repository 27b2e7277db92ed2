"""Notifications wired to a real worker: a run's end asks for an evaluation, receivers that
answer 500 or hang are told (and recorded) without delaying the runs that follow."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import Engine, text

from tests.helpers.waiting import wait_for_job
from tests.upstream import ReplayUpstream

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SOURCES = ["coingecko", "coinpaprika", "csv"]


class BadReceiver:
    """Local webhooks: /hook never answers (until closed); /slack answers 500 or hangs too."""

    def __init__(self, slack_hangs: bool = False) -> None:
        self.hits: list[tuple[float, str]] = []
        self.mode = "both-hang" if slack_hangs else "slack-500"
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.hits.append((time.monotonic(), self.path))
                if self.path.startswith("/hook") or slack_hangs:
                    owner.release.wait(60)
                    return
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Let hung handlers go and stop."""
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=["slack-500", "both-hang"])
def bad_receiver(request: pytest.FixtureRequest) -> Iterator[BadReceiver]:
    """A receiver that fails in both ways, or hangs on both targets."""
    server = BadReceiver(slack_hangs=request.param == "both-hang")
    yield server
    server.close()


def _job(client: Any, auth: dict[str, str]) -> dict[str, Any]:
    response = client.post("/jobs", json={"sources": SOURCES}, headers=auth)
    assert response.status_code == 202, response.get_json()
    return wait_for_job(client, response.get_json()["id"], timeout=120)


def _timings(engine: Engine, job_id: int) -> dict[str, tuple[float, float]]:
    """Per source: (seconds queued before starting, seconds running)."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT source, extract(epoch FROM started_at - created_at), "
            "extract(epoch FROM finished_at - started_at) FROM runs WHERE job_id = :j"),
            {"j": job_id}).all()
    return {source: (float(wait), float(run)) for source, wait, run in rows}


def test_failing_and_hanging_receivers_never_delay_runs(
    clean_db: Engine, client: Any, auth_headers: dict[str, str], worker_factory: Any,
    upstream: ReplayUpstream, csv_dir: Path, bad_receiver: BadReceiver,
) -> None:
    worker_factory({
        "COINGECKO_BASE_URL": upstream.coingecko_base_url,
        "COINPAPRIKA_BASE_URL": upstream.coinpaprika_base_url,
        "COINGECKO_RATE_LIMIT": "1000", "COINPAPRIKA_RATE_LIMIT": "1000",
        "HTTP_TIMEOUT_SECONDS": "3", "HTTP_MAX_RETRIES": "0", "CSV_DIR": str(csv_dir),
        "SLACK_WEBHOOK_URL": bad_receiver.url + "/slack/T0/SECRET",
        "ALERT_WEBHOOK_URL": bad_receiver.url + "/hook?token=SECRET",
        "NOTIFY_TIMEOUT_SECONDS": "5",
    }, concurrency=4)
    baseline = _job(client, auth_headers)  # every source fresh: nothing to tell
    assert baseline["status"] == "succeeded", baseline
    before = _timings(clean_db, baseline["id"])

    upstream.add_fault("401", endpoint="coinpaprika")
    failing = _job(client, auth_headers)
    assert failing["status"] == "partial", failing
    # The run's end asked for an evaluation: both targets are called within seconds (one
    # after the other when both hang: one send slot).
    deadline = time.monotonic() + 20
    while {p.split("/")[1].split("?")[0] for _, p in bad_receiver.hits} != {"slack", "hook"}:
        assert time.monotonic() < deadline, bad_receiver.hits
        time.sleep(0.1)
    hung_at = time.monotonic()

    # While the hook hangs and Slack's retries are pending, the next job runs as usual.
    started = time.monotonic()
    during = _job(client, auth_headers)
    elapsed = time.monotonic() - started
    assert during["status"] == "partial", during
    after = _timings(clean_db, during["id"])
    print(f"\nbaseline (queued s, ran s): {before}\nwhile receivers fail: {after}\n"
          f"job wall time {elapsed:.2f} s, started {started - hung_at:.2f} s after the hang")
    for source, (wait, seconds) in after.items():
        assert wait < 1.5, (source, after)  # no run waited for a worker held by a receiver
        assert seconds < before[source][1] + 2.0, (source, before, after)
    assert elapsed < 10, elapsed

    slack_hangs = "both" in bad_receiver.mode
    # Each notification is recorded once, failed with a short error that names no URL.
    deadline = time.monotonic() + 30
    while True:
        with clean_db.connect() as conn:
            rows = conn.execute(text(
                "SELECT target, event, status, error FROM notifications ORDER BY target")).all()
        if len(rows) == 2 and all(r.status == "failed" for r in rows):
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
    assert [(r.target, r.event) for r in rows] == [("slack", "failed"), ("webhook", "failed")]
    errors = {r.target: r.error for r in rows}
    assert "Timeout" in errors["webhook"], errors
    assert "Timeout" in errors["slack"] if slack_hangs else errors["slack"] == "HTTP 500"
    assert all("SECRET" not in (e or "") for e in errors.values())
    status = client.get("/status").get_data(as_text=True)
    assert '<span class="badge failed">2 failed</span>' in status
