"""Two batches in flight on two real connections: side by side, yet committed in order."""
from __future__ import annotations

import gc
import threading
import time
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from shared.ingest.batch_writer import LoadState
from shared.ingest.pipeline import GC_YOUNG_THRESHOLD, write_in_order
from shared.batch.types import Batch, PreparedQuotes, QuoteBlock


@pytest.fixture()
def probe(clean_db: Engine) -> Iterator[Engine]:
    """A table the batches write to, dropped afterwards."""
    with clean_db.begin() as conn:
        conn.execute(text("CREATE TABLE pipeline_probe (batch int, phase text)"))
    yield clean_db
    with clean_db.begin() as conn:
        conn.execute(text("DROP TABLE pipeline_probe"))


def _batch(index: int, spans: dict[int, tuple[str, str]] | None = None) -> Batch:
    batch = Batch("file.csv", {"offset": index + 1})
    if spans is not None:
        batch.quote_blocks = [QuoteBlock(str(a), "S", None, "", 1) for a in spans]
        batch.prepared = PreparedQuotes(b"", spans)
    return batch


class Recorder:
    """A WriteBatch that records what happened, in order, and can be slowed or made to fail."""

    def __init__(self, slow: int | None = None, fail: int | None = None) -> None:
        self.slow, self.fail = slow, fail
        self.events: list[str] = []
        self.previous: dict[int, Any] = {}
        self.lock = threading.Lock()

    def note(self, event: str) -> None:
        with self.lock:
            self.events.append(event)

    def __call__(self, session: Session, batch: Batch, previous: dict[str, Any] | None,
                 state: LoadState, wait_turn: Callable[[], None]) -> None:
        index = batch.checkpoint["offset"] - 1
        self.previous[index] = previous
        self.note(f"{index} bulk")
        session.execute(text("INSERT INTO pipeline_probe VALUES (:b, 'bulk')"), {"b": index})
        if index == self.slow:
            time.sleep(0.5)
        if index == self.fail:
            raise RuntimeError(f"batch {index} broke")
        self.note(f"{index} bulk done")
        wait_turn()
        self.note(f"{index} turn")
        session.execute(text("INSERT INTO pipeline_probe VALUES (:b, 'turn')"), {"b": index})


def _stored(engine: Engine) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT batch, phase FROM pipeline_probe ORDER BY batch, phase"))]


def test_a_later_batch_writes_beside_an_earlier_one_but_takes_its_turn_after_it(
    probe: Engine,
) -> None:
    write = Recorder(slow=0)
    checkpoints: dict[str, Any] = {}
    write_in_order(probe, iter([_batch(0), _batch(1)]), write, checkpoints)
    # Batch 1 did its bulk rows while batch 0 was still at work, then waited for its turn.
    assert write.events.index("1 bulk done") < write.events.index("0 bulk done")
    assert write.events.index("0 turn") < write.events.index("1 turn")
    # Each compare-and-set expects the checkpoint of the batch before it.
    assert write.previous == {0: None, 1: {"offset": 1}}
    assert checkpoints == {"file.csv": {"offset": 2}}
    assert _stored(probe) == [(0, "bulk"), (0, "turn"), (1, "bulk"), (1, "turn")]


def test_a_failed_batch_rolls_back_the_batch_written_beside_it(probe: Engine) -> None:
    write = Recorder(slow=0, fail=0)
    batches = iter([_batch(0), _batch(1), _batch(2)])
    with pytest.raises(RuntimeError, match="batch 0 broke"):
        write_in_order(probe, batches, write, {})
    # Batch 1 wrote its bulk rows, but never got its turn: nothing of it (or of 0) is stored,
    # and batch 2 was not started.
    assert "1 bulk done" in write.events and "1 turn" not in write.events
    assert not any(event.startswith("2 ") for event in write.events)
    assert _stored(probe) == []


def test_young_collections_wait_during_a_run_and_the_thresholds_come_back(probe: Engine) -> None:
    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []
    write = Recorder(fail=1)

    def batches() -> Iterator[Batch]:
        for index in range(2):
            seen.append(gc.get_threshold())
            yield _batch(index)

    # Failed or not, the process gets its own thresholds back.
    with pytest.raises(RuntimeError, match="batch 1 broke"):
        write_in_order(probe, batches(), write, {})
    assert seen == [(max(before[0], GC_YOUNG_THRESHOLD), *before[1:])] * 2
    assert gc.get_threshold() == before


def test_batches_that_may_share_a_quote_key_are_not_written_side_by_side(
    probe: Engine,
) -> None:
    overlapping = [_batch(0, {7: ("2020-01-01", "2020-01-09")}),
                   _batch(1, {7: ("2020-01-09", "2020-01-20")})]
    write = Recorder(slow=0)
    write_in_order(probe, iter(overlapping), write, {})
    # Batch 1 started only after batch 0 had ended.
    assert write.events == ["0 bulk", "0 bulk done", "0 turn", "1 bulk", "1 bulk done",
                            "1 turn"]

    disjoint = [_batch(0, {7: ("2020-01-01", "2020-01-09")}),
                _batch(1, {7: ("2020-01-10", "2020-01-20"), 8: ("2020-01-01", "2020-01-09")})]
    write = Recorder(slow=0)
    write_in_order(probe, iter(disjoint), write, {})
    assert write.events.index("1 bulk done") < write.events.index("0 bulk done")


def test_span_overlap() -> None:
    day = PreparedQuotes(b"", {1: ("2020-01-01", "2020-01-05")})
    assert day.may_share_key(PreparedQuotes(b"", {1: ("2020-01-05", "2020-01-06")}))
    assert day.may_share_key(PreparedQuotes(b"", {1: ("2019-12-01", "2020-02-01")}))
    assert not day.may_share_key(PreparedQuotes(b"", {1: ("2020-01-06", "2020-01-07")}))
    assert not day.may_share_key(PreparedQuotes(b"", {2: ("2020-01-01", "2020-01-05")}))


def test_a_lost_connection_is_told_from_a_failed_statement() -> None:
    # The bulk writes run on raw cursors, whose errors arrive unwrapped: a dropped
    # connection must still make the task retry (F10), while a statement error fails the run.
    import psycopg2
    from sqlalchemy.exc import OperationalError as WrappedOperationalError

    from shared.ingest.execute import _is_connection_error

    assert _is_connection_error(psycopg2.OperationalError("server closed the connection"))
    assert _is_connection_error(psycopg2.InterfaceError("connection already closed"))
    assert _is_connection_error(
        WrappedOperationalError("COPY", {}, psycopg2.OperationalError("gone")))
    assert not _is_connection_error(psycopg2.errors.QueryCanceled("statement timeout"))
    assert not _is_connection_error(psycopg2.errors.UniqueViolation("duplicate key"))
    assert not _is_connection_error(ValueError("bad line"))
