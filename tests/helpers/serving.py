"""The API served by a real gunicorn on a loopback port, and waiting for a process to answer."""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from scripts import stack


def status_of(url: str, timeout: float = 2) -> int:
    """The HTTP status `url` answers with, or 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


def wait_while_alive(check: Callable[[], bool], process: subprocess.Popen[bytes], log: Path,
                     seconds: float = 60, what: str = "the server") -> None:
    """Poll `check` until it holds; fail at once if `process` exits, or after `seconds`."""
    deadline = time.monotonic() + seconds
    while not check():
        assert process.poll() is None, f"{what}: process exited:\n{stack._tail(log, 60)}"
        assert time.monotonic() < deadline, f"{what} not within {seconds}s:\n{stack._tail(log)}"
        time.sleep(0.3)


class Gunicorn:
    """gunicorn serving `api:create_app()` with api/serving/gunicorn_conf.py, as `make run`."""

    def __init__(self, env: dict[str, str], log: Path, *extra: str, timeout: float = 60
                 ) -> None:
        self.port = stack.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.child = stack.spawn("api", [
            sys.executable, "-m", "gunicorn", "-c", "python:api.serving.gunicorn_conf",
            "api:create_app()", "-b", f"127.0.0.1:{self.port}", *extra], env, log)
        try:
            wait_while_alive(lambda: status_of(f"{self.base}/health/live") == 200,
                             self.child.popen, log, timeout, "gunicorn")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop gunicorn (its logs are flushed when it exits)."""
        stack.stop_children([self.child], timeout=20)
