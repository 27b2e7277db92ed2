"""Streamed exports over HTTP: the format a request asks for, the response, its OpenAPI entries."""
from __future__ import annotations

from typing import Any, Callable, Iterator

from flask import Response, request, stream_with_context
from flask_smorest import Blueprint

from api.db import get_engine, get_session
from api.http.read_timeout import export_engine
from shared.queries.export import EXPORT_FORMATS, MEDIA_TYPES, Export, stream

View = Callable[..., Any]
_ACCEPT = {"text/csv": "csv", "application/x-ndjson": "ndjson"}


def export_responses(blp: Blueprint) -> Callable[[View], View]:
    """Document the streamed CSV and NDJSON bodies beside the JSON one (same status, 200)."""
    def document(view: View) -> View:
        for media_type in ("application/x-ndjson", "text/csv"):
            view = blp.alt_response(
                200, schema={"type": "string"}, content_type=media_type,
                description="A JSON page; with `format=csv|ndjson` (or that Accept) every row, "
                            "streamed")(view)
        return view

    return document


def export_format(args: dict[str, Any]) -> str | None:
    """'csv' or 'ndjson' when asked for by `format=` (first) or Accept; None for JSON."""
    fmt = args.get("format")
    if fmt:
        return fmt if fmt in EXPORT_FORMATS else None
    accept = request.headers.get("Accept", "")
    if "csv" not in accept and "ndjson" not in accept:
        return None  # the usual case, on GET /data's hot path: no header parsing
    best = request.accept_mimetypes.best_match(["application/json", *_ACCEPT])
    return _ACCEPT.get(best or "")


def streamed(fmt: str, export: Export) -> Response:
    """A streaming response of the export's records in `fmt`.

    The stream reads on a connection of its own, so the request's session is closed first.
    The read runs under API_EXPORT_STATEMENT_TIMEOUT_MS, and its first chunk is read here,
    before the response starts: the costly part of the query (plan, sort, first rows) then
    fails as an error answer (503 on a timeout), not as a 200 cut short.
    """
    get_session().close()
    chunks = stream(export_engine(get_engine()), fmt, export)
    first = next(chunks, None)
    body = stream_with_context(_resume(first, chunks))
    response = Response(body, mimetype=MEDIA_TYPES[fmt].split(";")[0])
    response.headers["Content-Disposition"] = f'attachment; filename="{export.name}.{fmt}"'
    return response


def _resume(first: bytes | None, chunks: Iterator[bytes]) -> Iterator[bytes]:
    try:
        if first is not None:
            yield first
        yield from chunks
    finally:
        # Closing the stream ends its `with engine.connect()`: the connection goes back.
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
