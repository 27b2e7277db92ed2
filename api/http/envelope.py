"""Request ids and the list envelope {request_id, api_latency_ms, data, pagination}."""
from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Sequence, cast

from flask import Flask, Response, current_app, g, request

from shared.queries.paging import Page

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")


def init_request_ids(app: Flask) -> None:
    """Give each request an id (the caller's X-Request-ID if sane) and echo it back."""

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        g.request_started = time.perf_counter()

    @app.after_request
    def _echo(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        return response


def envelope(
    data: Sequence[Any], page: int | None, page_size: int, total: int | None,
    next_cursor: str | None = None,
) -> dict[str, Any]:
    """The list body with request id, latency so far, page numbers and the next cursor."""
    return _list_body(g.request_id, round((time.perf_counter() - g.request_started) * 1000, 3),
                      list(data), page, page_size, total, next_cursor)


def _list_body(request_id: Any, latency: Any, data: Sequence[Any], page: int | None,
               page_size: int, total: int | None, next_cursor: str | None) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "api_latency_ms": latency,
        "data": data,
        "pagination": {
            "page": page,
            "page_size": page_size,
            "total": total,
            # Null when the total was not counted (GET /data without `total=true`).
            "total_pages": None if total is None else (total + page_size - 1) // page_size,
            "next_cursor": next_cursor,
        },
    }


def paged(page: Page, args: dict[str, Any]) -> dict[str, Any]:
    """The list body for a `shared.queries.paging.Page` fetched with the request's paging args."""
    number = None if args.get("cursor") else args["page"]
    return envelope(page.rows, number, args["page_size"], page.total, page.next_cursor)


def page_window(args: dict[str, Any]) -> dict[str, Any]:
    """offset/limit/cursor keyword arguments for a query function, from page/page_size/cursor."""
    return {"offset": (args["page"] - 1) * args["page_size"], "limit": args["page_size"],
            "cursor": args.get("cursor")}


# Stand-ins for the two per-request values of a list body. PostgreSQL text cannot hold NUL, so
# their JSON encodings ("\u0000...") cannot occur anywhere else in a body.
_LATENCY_MARK = "\x00api_latency_ms\x00"
_REQUEST_ID_MARK = "\x00request_id\x00"
# Stands for the records when the caller brings them as JSON text (api.schemas.data).
_DATA_MARK = "\x00data\x00"


@dataclass(frozen=True)
class BodyTemplate:
    """A serialized list body cut around its two per-request values."""

    head: bytes
    middle: bytes
    tail: bytes
    latency_first: bool

    @property
    def size(self) -> int:
        """Bytes held."""
        return len(self.head) + len(self.middle) + len(self.tail)


def body_template(data: Sequence[Any], page: int | None, page_size: int, total: int | None,
                  next_cursor: str | None = None, data_json: str | None = None
                  ) -> BodyTemplate | None:
    """The list body serialized once, cut around its latency and request id.

    Serialized by the app's JSON provider exactly as `jsonify(envelope(...))` is, so a
    response assembled by `template_response` is byte for byte the one the schema path gives
    (tests/api/test_data_cache.py compares them). `data_json`, when given, is the records
    already written as that provider writes them, put in place of `data`. None if the cut is
    not clean.
    """
    body = _list_body(_REQUEST_ID_MARK, _LATENCY_MARK,
                      data if data_json is None else _DATA_MARK,
                      page, page_size, total, next_cursor)
    provider = current_app.json
    # Typed as werkzeug's sans-IO response; the app's response_class is flask.Response.
    text = cast(Response, provider.response(body)).get_data()
    if data_json is not None:
        mark = provider.dumps(_DATA_MARK).encode()
        if text.count(mark) != 1:
            return None
        text = text.replace(mark, data_json.encode())
    latency = provider.dumps(_LATENCY_MARK).encode()
    request_id = provider.dumps(_REQUEST_ID_MARK).encode()
    if text.count(latency) != 1 or text.count(request_id) != 1:
        return None
    latency_first = text.index(latency) < text.index(request_id)
    first, second = (latency, request_id) if latency_first else (request_id, latency)
    head, rest = text.split(first)
    middle, tail = rest.split(second)
    return BodyTemplate(head, middle, tail, latency_first)


def template_response(template: BodyTemplate) -> Response:
    """The response of a body template, with this request's latency and request id filled in."""
    provider = current_app.json
    latency = provider.dumps(round((time.perf_counter() - g.request_started) * 1000, 3))
    request_id = provider.dumps(g.request_id)
    first, second = (latency, request_id) if template.latency_first else (request_id, latency)
    body = b"".join((template.head, first.encode(), template.middle, second.encode(),
                     template.tail))
    return current_app.response_class(
        body, mimetype=getattr(provider, "mimetype", "application/json"))
