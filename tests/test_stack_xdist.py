"""`make test` (scripts/stack.py test): parallel sessions, each with Redis databases of its own."""
from __future__ import annotations

import pytest

from scripts.stack import MAX_TEST_WORKERS, xdist_args, xdist_workers

PARALLEL = ["-n", "3", "--dist", "loadscope"]


@pytest.mark.parametrize("args", [
    [],
    ["--cov", "--cov-report=term-missing:skip-covered", "--cov-fail-under=90"],
    ["-m", "not e2e and not faults and not browser and not slow and not processes"],
    ["-k", "cli", "-q"],
])
def test_the_suite_or_a_selection_runs_in_parallel_sessions(args: list[str]) -> None:
    assert xdist_args(args, 3) == PARALLEL


@pytest.mark.parametrize("args", [
    ["tests/api/cli/test_cli.py", "-q"],
    ["tests/faults"],
    ["tests/api/test_data.py::test_records_keep_their_fields_and_exact_upstream_decimals"],
    ["-n", "2"], ["-n0"], ["--numprocesses=4"], ["--dist", "load"], ["-p", "no:xdist"],
])
def test_named_tests_or_an_own_choice_run_as_given(args: list[str]) -> None:
    assert xdist_args(args, 3) == []


def test_the_number_of_sessions() -> None:
    assert xdist_workers({"TEST_WORKERS": "1"}) == 1 and xdist_args([], 1) == []
    assert xdist_workers({"TEST_WORKERS": "5"}) == 5
    # Each session takes two Redis database indexes (tests/conftest.py): eight at most.
    assert xdist_workers({"TEST_WORKERS": "64"}) == MAX_TEST_WORKERS == 8
    assert 2 <= xdist_workers({}) <= MAX_TEST_WORKERS


@pytest.mark.parametrize("worker, indexes", [(None, (15, 14)), ("gw0", (15, 14)),
                                             ("gw1", (13, 12)), ("gw7", (1, 0))])
def test_each_session_has_redis_databases_of_its_own(
    monkeypatch: pytest.MonkeyPatch, worker: str | None, indexes: tuple[int, int]
) -> None:
    from tests.conftest import redis_db_url

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.delenv("TEST_REDIS_DB", raising=False)
    if worker is None:
        monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    else:
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    assert (redis_db_url(), redis_db_url(offset=1)) == tuple(
        f"redis://127.0.0.1:6379/{index}" for index in indexes)
