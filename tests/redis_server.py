"""A redis-server of a test's own, on a fixed free port: to kill, start again, or guard."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from scripts import stack
from tests.conftest import QUEUE_KEYS


class RedisServer:
    """The `redis-server` binary on a free loopback port, without persistence.

    `password` sets `requirepass`: the URL then carries it, as a managed Redis's would.
    """

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.port, self.workdir, self.password = stack.free_port(), workdir, password
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (a restart begins empty) and wait until its port answers."""
        args = [str(stack.redis_server_binary()), "--port", str(self.port),
                "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while not self._answers():
            assert self.proc.poll() is None, f"redis-server exited ({self.proc.returncode})"
            assert time.monotonic() < deadline, "redis-server did not answer within 20 s"
            time.sleep(0.1)

    def _answers(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL it and wait until nothing answers on its port."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        assert not stack.port_answers("127.0.0.1", self.port)

    def queued(self) -> int:
        """Task messages waiting in this test session's queues on this server."""
        client = redis.Redis.from_url(self.url)
        try:
            return sum(int(client.llen(key)) for key in QUEUE_KEYS.values())
        finally:
            client.close()
