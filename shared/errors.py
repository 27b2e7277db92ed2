"""Domain exceptions (no HTTP here: the API maps them to codes) and an error's safe public text."""
from __future__ import annotations

import os
import re


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


# --- the short, safe text of an error, for what the API serves ------------------------------

# Longest error text stored on a run (and served by /jobs, /runs, /stats).
PUBLIC_ERROR_MAX_LENGTH = 300

# SQLAlchemy appends the statement, its parameters (other rows' data) and a link; drop all.
_SQLALCHEMY_TAIL = re.compile(
    r"\s*(\[SQL:|\[parameters:|\(Background on this error|DETAIL:|HINT:|CONTEXT:).*", re.DOTALL)
# An absolute path (two segments or more): only its last segment is kept.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/-])(?:/[^\s/'\",;:()\[\]]+)+/([^\s/'\",;:()\[\]]*)")
# key=value / key: value pairs whose name says secret (query strings, DSNs, headers).
_SECRET_PAIR = re.compile(
    r"(?i)\b((?:access_|api_|x-cg-(?:demo|pro)-api-)?(?:token|key|secret|password|passwd|"
    r"authorization)[\w-]*)(\s*[=:]\s*)['\"]?(?:(?:bearer|basic)\s+)?[^\s&;,'\"]+['\"]?")
# user:password@ in a URL.
_URL_CREDENTIALS = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/\s@]+@")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def safe_error_text(text: str | None, limit: int = PUBLIC_ERROR_MAX_LENGTH) -> str | None:
    """`text` without SQL, parameters, absolute paths, credentials or control characters, capped.

    The API applies it to every stored error it serves, a second line of defence for rows
    written before `public_error` existed.
    """
    if text is None:
        return None
    text = _SQLALCHEMY_TAIL.sub("", text)
    text = _URL_CREDENTIALS.sub(r"\1", text)
    text = _SECRET_PAIR.sub(r"\1\2[REDACTED]", text)
    text = _ABSOLUTE_PATH.sub(r"\1", text)
    text = " ".join(_CONTROL.sub(" ", text).split())
    if len(text) > limit:
        text = text[:limit - 3].rstrip() + "..."
    return text


def public_error(exc: BaseException, source: str) -> str:
    """The short, typed text of a run's failure that the API may serve.

    `"coingecko: HTTP 401 from upstream"`, `"database: IntegrityError"`,
    `"csv: IsADirectoryError: x.csv"`. Only our own errors keep their message (they are
    written to be shown, and are scrubbed anyway); any other exception is named by its type,
    since its text may hold SQL, rows of data, paths or secrets. The full detail belongs in
    the worker's log.
    """
    prefix = f"{source}: "
    if _is_database_error(exc):
        orig = getattr(exc, "orig", None)
        detail = type(exc).__name__
        if orig is not None and type(orig).__name__ != detail:
            detail += f" ({type(orig).__name__})"
        return safe_error_text(f"database: {detail}") or "database: error"
    if isinstance(exc, UpstreamError) and exc.status is not None:
        what = "redirect from upstream (not followed)" if 300 <= exc.status < 400 \
            else "from upstream"
        return f"{prefix}HTTP {exc.status} {what}"
    if isinstance(exc, EtlError):
        message = str(exc)
        if message.startswith(prefix):
            message = message[len(prefix):]
        return safe_error_text(prefix + (message or type(exc).__name__)) or prefix.strip()
    if type(exc).__name__ in ("SoftTimeLimitExceeded", "TimeLimitExceeded"):
        return f"{prefix}time limit exceeded"
    if isinstance(exc, OSError):
        name = getattr(exc, "filename", None)
        where = ""
        if isinstance(name, (str, bytes)):
            # Bytes that are not UTF-8 (a hostile file name) are shown escaped.
            base = os.path.basename(os.fsencode(name)).decode("utf-8", "backslashreplace")
            where = ": " + base
        return safe_error_text(f"{prefix}{type(exc).__name__}{where}") or prefix.strip()
    return f"{prefix}{type(exc).__name__}"


def _is_database_error(exc: BaseException) -> bool:
    # By module, not import: shared.errors stays free of SQLAlchemy and the driver.
    module = type(exc).__module__ or ""
    return module.startswith(("sqlalchemy.exc", "psycopg2", "psycopg"))
