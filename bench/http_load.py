"""Closed-loop HTTP load on loopback: wrk when installed, else an asyncio generator.

Both keep `connections` keep-alive connections busy for `seconds` (and at most `max_requests`
for the Python generator) and report requests/s, p50/p99 latency and non-2xx answers.
"""
from __future__ import annotations

import asyncio
import http.client
import itertools
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    """What one load run measured."""

    tool: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip()).groups()  # type: ignore
    return float(number) * _UNITS[unit]


# `since=` a distinct instant before 2001 on every request (wrk Lua; `id` is set per thread).
_UNIQUE_SINCE_LUA = """
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
local counter = 0
function request()
  counter = counter + 1
  local since = os.date("!%Y-%m-%dT%H:%M:%SZ", id * 100000000 + counter)
  return wrk.format("GET", PATH .. "&since=" .. since)
end
"""


def _path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def run_wrk(url: str, connections: int, seconds: int, threads: int = 2,
            unique_since: bool = False) -> LoadResult:
    """Run wrk and parse its latency distribution."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
               "--timeout", "10s"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        if unique_since:
            path = _path_of(url).replace("\\", "\\\\").replace('"', '\\"')
            script.write(f'PATH = "{path}"\n' + _UNIQUE_SINCE_LUA)
            script.flush()
            command += ["-s", script.name]
        out = subprocess.run(command + [url], capture_output=True, text=True,
                             timeout=seconds + 60, check=True).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> LoadResult:
    """requests/s, p50, p99 and errors from wrk's --latency report."""
    # wrk pads a latency in seconds ("1.13s ") with a trailing space.
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)[ \t]*$", out, re.M))
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if total is None or len(pct) != 2:
        raise RuntimeError(f"wrk printed no request count or latency distribution:\n{out}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                              r"timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    elapsed = _ms(total.group(2) + total.group(3)) / 1000
    requests = int(total.group(1))
    return LoadResult("wrk", requests, elapsed, requests / elapsed, _ms(pct["50"]),
                      _ms(pct["99"]), errors)


async def _client(host: str, port: int, make_request: Callable[[], bytes], deadline: float,
                  budget: list[int], latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            started = time.perf_counter()
            writer.write(make_request())
            status = await reader.readline()
            length, close = 0, False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            await reader.readexactly(length)
            if status.split(b" ", 2)[1:2] == [b"200"]:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                errors[0] += 1
            if close or not status:
                # gunicorn's sync workers answer one request per connection (as wrk does,
                # open a new one; the connect is not part of the latency).
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


def run_python(url: str, connections: int, seconds: int, max_requests: int = 200_000,
               unique_since: bool = False) -> LoadResult:
    """The fallback generator: asyncio, one keep-alive connection per task."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = _path_of(url)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    counter = itertools.count(1)
    epoch = datetime(1971, 1, 1, tzinfo=timezone.utc)

    def make_request() -> bytes:
        if not unique_since:
            return request
        since = (epoch + timedelta(seconds=next(counter))).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"GET {path}&since={since} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    latencies: list[float] = []
    errors = [0]
    budget = [max_requests]

    async def main() -> float:
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(*(
            _client(host, port, make_request, deadline, budget, latencies, errors)
            for _ in range(connections)
        ))
        return time.monotonic() - started

    elapsed = asyncio.run(main())
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0
    return LoadResult("python-asyncio", len(ordered), elapsed, len(ordered) / elapsed,
                      statistics.median(ordered) if ordered else 0.0, p99, errors[0])


def run_load(url: str, connections: int = 64, seconds: int = 10,
             unique_since: bool = False) -> LoadResult:
    """wrk if it is on PATH, else the Python generator.

    `unique_since` appends `&since=<a distinct instant before 2001>` to every request: the
    same rows as without it, but a filter set no cache has seen.
    """
    if shutil.which("wrk"):
        return run_wrk(url, connections, seconds, unique_since=unique_since)
    return run_python(url, connections, seconds, unique_since=unique_since)


def sequential_latency(host: str, port: int, path: str, count: int) -> list[float]:
    """Latencies (ms) of `count` requests one after another on one keep-alive connection."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    times: list[float] = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path}: {response.status}")
            times.append((time.perf_counter() - started) * 1000)
    finally:
        conn.close()
    return times
