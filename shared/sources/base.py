"""The contract every source implements, and the context a run gives it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

from shared.config import Settings
from shared.batch.types import Batch


@dataclass
class RunContext:
    """What a source needs from the run it belongs to."""

    run_id: int
    source: str
    settings: Settings
    # Committed checkpoints of this source, key -> value, read when the run started.
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    # FAIL_AFTER_N_RECORDS: sources cut batches so that a batch boundary falls on it.
    max_records: int | None = None
    records_done: int = 0
    # Called by clients for every rate-limit wait / retry so that the run can count them.
    on_event: Callable[[str, float], None] = lambda name, amount: None


class Source(Protocol):
    """A source yields batches; each batch commits atomically with its checkpoint."""

    name: str

    @property
    def read_ahead(self) -> bool:
        """Whether the next batches may be read (and written) before this one commits.

        True only when a source's batches depend on nothing but its input, never on what
        committed (shared.ingest.pipeline.read_ahead, shared.ingest.execute).
        """
        ...

    @property
    def partial_reason(self) -> str | None:
        """After batches(): why some input could not be read (the run ends partial), or None."""
        ...

    def batches(self, ctx: RunContext) -> Iterator[Batch]:
        """Yield batches from the committed checkpoint on; raise SourceError on failure."""
        ...
