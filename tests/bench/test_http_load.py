"""The bench's reading of wrk's report (a figure it misreads would be a wrong table row)."""
from __future__ import annotations

import pytest

from bench.http_load import parse_wrk

_REPORT = """Running 10s test @ http://127.0.0.1:39501/data?page_size=100
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   872.46ms  126.47ms   1.24s    83.59%
    Req/Sec    52.08     28.72    90.00     68.55%
  Latency Distribution
     50%  834.04ms
     75%  978.34ms
     90%    1.02s{pad}
     99%    1.13s{pad}
  707 requests in 10.03s, 18.76MB read
{errors}Requests/sec:     70.48
Transfer/sec:      1.87MB
"""


def test_latencies_in_seconds_are_read_with_wrks_padding() -> None:
    result = parse_wrk(_REPORT.format(pad=" ", errors=""))
    assert (result.requests, result.p50_ms, result.p99_ms, result.errors) == (
        707, 834.04, 1130.0, 0)
    assert result.rps == pytest.approx(707 / 10.03)


def test_error_responses_and_socket_errors_count_as_errors() -> None:
    errors = ("  Socket errors: connect 0, read 2, write 0, timeout 3\n"
              "  Non-2xx or 3xx responses: 5\n")
    assert parse_wrk(_REPORT.format(pad="", errors=errors)).errors == 10


def test_a_report_without_a_latency_distribution_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no request count or latency distribution"):
        parse_wrk("Running 10s test @ http://127.0.0.1:1/\n  0 requests in 10.00s, 0B read\n")
