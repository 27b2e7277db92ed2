"""Run errors are stored as short, typed text (shared.errors.public_error)."""
from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from shared.config import Settings
from shared.errors import PUBLIC_ERROR_MAX_LENGTH, SourceError, UpstreamError, public_error
from tests.api.helpers import run_sources
from tests.upstream import ReplayUpstream


def test_upstream_401_is_stored_short_and_typed(clean_db: Engine, api_settings: Settings,
                                                upstream: ReplayUpstream) -> None:
    """A real run against an upstream answering 401: the run and the job say just that."""
    upstream.add_fault("401", endpoint="coingecko")
    job = run_sources(clean_db, api_settings, ["coingecko"])
    assert job["status"] == "failed"
    assert job["runs"][0]["error"] == "coingecko: HTTP 401 from upstream"
    assert job["error"] == "coingecko: HTTP 401 from upstream"


def test_public_error_of_a_real_database_error(clean_db: Engine) -> None:
    """An IntegrityError raised by PostgreSQL becomes its type names only."""
    with pytest.raises(IntegrityError) as caught:
        with clean_db.begin() as conn:
            for _ in range(2):
                conn.execute(text(
                    "INSERT INTO assets (slug, symbol, name) VALUES ('SECRETROW', 'S', 'n')"))
    assert "SECRETROW" in str(caught.value)
    assert public_error(caught.value, "csv") == "database: IntegrityError (UniqueViolation)"


@pytest.mark.parametrize(("exc", "expected"), [
    (UpstreamError("coingecko: HTTP 402 (plan or quota) for /coins/markets: {\"k\": 1}", 402),
     "coingecko: HTTP 402 from upstream"),
    (UpstreamError("coingecko: HTTP 302 redirect to evil.example for /x", 302),
     "coingecko: HTTP 302 redirect from upstream (not followed)"),
    (SourceError("csv: coin_X.csv line 12: name longer than 300 characters"),
     "csv: coin_X.csv line 12: name longer than 300 characters"),
    (SourceError("bad file /home/someone/secret/dir/coin_X.csv token=abc"),
     "csv: bad file coin_X.csv token=[REDACTED]"),
    (SourceError("could not connect: password='hunter2' api_key: \"k-1\" host=db"),
     "csv: could not connect: password=[REDACTED] api_key: [REDACTED] host=db"),
    (IsADirectoryError(21, "Is a directory", "/data/csv/x.csv"), "csv: IsADirectoryError: x.csv"),
    (FileNotFoundError(2, "gone", b"/data/csv/\xff.csv"), "csv: FileNotFoundError: \\xff.csv"),
    (ValueError("A string literal cannot contain NUL (0x00) characters: 'row data'"),
     "csv: ValueError"),
    (RecursionError("maximum recursion depth exceeded"), "csv: RecursionError"),
])
def test_public_error_texts(exc: BaseException, expected: str) -> None:
    """Each kind of failure maps to its short text; arbitrary messages never pass through."""
    assert public_error(exc, expected.split(":")[0]) == expected


def test_public_error_caps_length() -> None:
    """Our own long messages are capped."""
    assert len(public_error(SourceError("y" * 5000), "csv")) == PUBLIC_ERROR_MAX_LENGTH
