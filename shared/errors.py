"""Domain exceptions (no HTTP here: the API maps them to status codes in one place)."""
from __future__ import annotations


class EtlError(Exception):
    """Base class of our domain errors."""


class SourceError(EtlError):
    """A source failed in a way a retry of the whole run will not fix right away."""


class UpstreamError(SourceError):
    """An upstream HTTP API answered with an error we do not retry (402, 4xx, bad body)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class InjectedFailure(EtlError):
    """Raised by FAIL_AFTER_N_RECORDS to demonstrate recovery."""


class NotFound(EtlError):
    """A requested entity (asset, job, run, source) does not exist."""


class Conflict(EtlError):
    """The request conflicts with the current state."""
