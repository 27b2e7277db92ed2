"""Batches read ahead, and two in flight: each written on its own connection, committed in order.

read_ahead() reads (and prepares) the next batch in a thread while the current one is written.

One connection writes a batch with about one core of PostgreSQL time (the COPY of quotes and
raw lines, their indexes, WAL), so with one connection the second core only parses. The
batches of a line source do not depend on each other: batch i+1 is written on a second
connection while batch i is. Each batch stays one transaction with its checkpoint, and the
commits keep the batches' order: after its bulk rows and before its checkpoint, batch i+1
waits until batch i has committed (if batch i failed, batch i+1 rolls back instead). A crash
therefore leaves a prefix of the batches committed, exactly as with one connection.

No deadlock is possible: before its turn a batch writes only rows that the batch in flight
beside it cannot touch. Raw line blocks have no unique key, and a reject's key holds its own
line's place in the file; quotes do have one, so the batches' quote keys are compared here
first (by each asset's span of times), and a batch that may share one with the batch before
it is written only after that one has ended. Everything two batches may both touch
(the published current quotes, the checkpoint row, the run's counters) comes after the turn.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import itertools
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from shared.ingest.batch_writer import LoadState
from shared.batch.types import Batch

WRITERS = 2
# glibc gives each thread that meets a busy heap its own malloc arena, and the arenas of the
# four threads here (read-ahead, two writers, the caller) kept growing with the file. Two
# arenas keep the peak RSS flat at no measured cost in speed (docs/benchmarks.md).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt() parameter number, from glibc's malloc.h
# CPython's cyclic GC collects its young generation every 700 new containers and promotes what
# is alive then, so the line tuples and lists of the batches in flight (none of them cycles) were
# traversed again and again by older collections, a large share of the line scan's time
# (docs/benchmarks.md). While a run is pipelined, a young collection waits for this many.
GC_YOUNG_THRESHOLD = 50_000
# Waits wake up this often so that a signal (Celery's soft time limit) reaches the main thread.
_POLL_SECONDS = 0.2

# write(session, batch, previous checkpoint, load state, wait_turn): the batch's statements,
# calling wait_turn() between its bulk rows and the rest; the pipeline commits.
WriteBatch = Callable[[Session, Batch, "dict[str, Any] | None", LoadState, Callable[[], None]],
                      None]


class EarlierBatchFailed(Exception):
    """This batch was rolled back because another batch failed (that one's error counts)."""


@dataclass(eq=False)
class _Slot:
    """One batch on its way through a writer."""

    index: int
    batch: Batch | None
    previous_checkpoint: dict[str, Any] | None
    before: _Slot | None  # the batch that may be in flight beside this one
    overlaps: bool  # shares a quote key with `before`: write only once it has ended
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def wait_before(self) -> None:
        """Block until the batch before this one has ended; raise if it did not commit."""
        before = self.before
        if before is None:
            return
        before.done.wait()
        if before.error is not None:
            raise EarlierBatchFailed(f"batch {before.index} failed")


def _shares_key(before: _Slot | None, batch: Batch) -> bool:
    """Whether `batch` may insert a quote key that `before` inserts too (unknown: yes)."""
    if before is None or batch.quote_count == 0:
        return False
    earlier = before.batch  # read once: the writer drops it when the batch ends
    if earlier is None or before.done.is_set() or earlier.quote_count == 0:
        return False
    if earlier.prepared is None or batch.prepared is None:
        return True
    return earlier.prepared.may_share_key(batch.prepared)


@functools.cache
def _limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas for this process (once; nothing to do on other C libraries)."""
    try:
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
    except (OSError, AttributeError):
        pass


class _Collections:
    """Raises the young GC threshold while at least one pipelined run is going (process-wide)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs = 0
        self.saved: tuple[int, int, int] = gc.get_threshold()

    @contextlib.contextmanager
    def fewer(self) -> Iterator[None]:
        """Fewer collections for the `with` block (the previous thresholds after the last)."""
        with self.lock:
            if self.runs == 0:
                self.saved = gc.get_threshold()
                gc.set_threshold(max(self.saved[0], GC_YOUNG_THRESHOLD), *self.saved[1:])
            self.runs += 1
        try:
            yield
        finally:
            with self.lock:
                self.runs -= 1
                if self.runs == 0:
                    gc.set_threshold(*self.saved)


_COLLECTIONS = _Collections()


class _Writers:
    """WRITERS threads, each writing the slots handed to it on its own connection."""

    def __init__(self, engine: Engine, write: WriteBatch) -> None:
        self.engine, self.write = engine, write
        self.failed = threading.Event()
        # A free writer is taken before the next batch is read: no batch waits in memory.
        self.permits = threading.Semaphore(WRITERS)
        self.queues: list[queue.Queue[_Slot | None]] = [queue.Queue() for _ in range(WRITERS)]
        self.failures: list[_Slot] = []
        self.threads = [threading.Thread(target=self._run, args=(inbox,),
                                         name=f"batch-writer-{n}", daemon=True)
                        for n, inbox in enumerate(self.queues)]
        for thread in self.threads:
            thread.start()

    def _run(self, inbox: queue.Queue[_Slot | None]) -> None:
        """A writer thread: one transaction per slot, on one connection for the whole run."""
        state = LoadState()
        connection: Connection | None = None
        session: Session | None = None
        try:
            while (slot := inbox.get()) is not None:
                try:
                    if self.failed.is_set():
                        raise EarlierBatchFailed("another batch failed")
                    if session is None:
                        # One connection per writer for the whole run: a session on the pool
                        # would check one out, and pre-ping it, for every batch.
                        connection = self.engine.connect()
                        session = Session(bind=connection)
                    if slot.overlaps:
                        slot.wait_before()
                    assert slot.batch is not None
                    self.write(session, slot.batch, slot.previous_checkpoint, state,
                               slot.wait_before)
                    session.commit()
                except BaseException as exc:  # noqa: B036 - handed to the caller's thread
                    self._fail(slot, exc, session)
                finally:
                    # Free the batch and the chain of earlier slots as soon as possible.
                    slot.batch = None
                    slot.before = None
                    slot.done.set()
                    self.permits.release()
        finally:
            if session is not None:
                session.close()
            if connection is not None:
                connection.close()

    def _fail(self, slot: _Slot, exc: BaseException, session: Session | None) -> None:
        """Record the slot's error, stop the batches after it and roll its transaction back."""
        slot.error = exc
        self.failures.append(slot)
        self.failed.set()
        try:
            if session is not None:
                session.rollback()
        except Exception:  # noqa: BLE001 - the connection is gone; exc says why
            pass

    def stop(self) -> None:
        """Let the writers finish what they hold, then end them."""
        for inbox in self.queues:
            inbox.put(None)
        for thread in self.threads:
            while thread.is_alive():
                thread.join(timeout=_POLL_SECONDS)

    def first_error(self) -> BaseException | None:
        """The cause, not the batches rolled back because of it."""
        causes = [s for s in self.failures if not isinstance(s.error, EarlierBatchFailed)]
        first = min(causes or self.failures, key=lambda slot: slot.index, default=None)
        return first.error if first is not None else None


def write_in_order(
    engine: Engine,
    batches: Iterable[Batch],
    write: WriteBatch,
    checkpoints: dict[str, dict[str, Any]],
    after_submit: Callable[[Batch], None] | None = None,
) -> None:
    """Write and commit `batches` in order, WRITERS at a time; raise the first batch's error.

    `checkpoints` holds the committed value of each checkpoint key; it is advanced as batches
    are handed out, since each batch's compare-and-set expects the value of the batch before.
    """
    _limit_malloc_arenas()
    with _COLLECTIONS.fewer():
        _write_all(engine, batches, write, checkpoints, after_submit)


def _write_all(
    engine: Engine, batches: Iterable[Batch], write: WriteBatch,
    checkpoints: dict[str, dict[str, Any]], after_submit: Callable[[Batch], None] | None,
) -> None:
    writers = _Writers(engine, write)
    before: _Slot | None = None
    pending = iter(batches)
    try:
        for index in itertools.count():
            # A free writer first, then the next batch: no batch waits here in memory.
            while not writers.permits.acquire(timeout=_POLL_SECONDS):
                pass
            batch = next(pending, None) if not writers.failed.is_set() else None
            if batch is None:
                writers.permits.release()
                break
            key = batch.checkpoint_key
            slot = _Slot(index, batch, checkpoints.get(key), before, _shares_key(before, batch))
            checkpoints[key] = batch.checkpoint
            writers.queues[index % WRITERS].put(slot)
            before = slot
            if after_submit is not None:
                after_submit(batch)
    except BaseException:
        writers.failed.set()  # e.g. a time limit: batches not yet started roll back at once
        raise
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
        writers.stop()
    error = writers.first_error()
    if error is not None:
        raise error


def read_ahead(
    batches: Iterator[Batch], depth: int = 1, prepare: Callable[[Batch], Batch] | None = None
) -> Iterator[Batch]:
    """Yield `batches` while a thread reads (and `prepare`s) the next `depth` ones.

    Parsing a batch (Python) then overlaps with writing the previous one (PostgreSQL, which
    releases the GIL). When the consumer stops early, the thread stops after the batch it is
    preparing and closes the source's generator itself.
    """
    handoff: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put((kind, value), timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if prepare is not None:
                    batch = prepare(batch)
                if not put("batch", batch):
                    return
            put("done", None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put("error", exc)
        finally:
            if isinstance(batches, Iterator) and hasattr(batches, "close"):
                batches.close()

    thread = threading.Thread(target=produce, name="batch-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            try:
                # A timeout keeps the wait interruptible (Celery's soft time limit is a signal).
                kind, value = handoff.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
            if kind == "batch":
                assert isinstance(value, Batch)
                yield value
            elif kind == "error":
                assert isinstance(value, BaseException)
                raise value
            else:
                return
    finally:
        stop.set()
        thread.join(timeout=60)
