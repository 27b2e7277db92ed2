"""Request ids and the list envelope {request_id, api_latency_ms, data, pagination}."""
from __future__ import annotations

import re
import time
import uuid
from typing import Any, Sequence

from flask import Flask, Response, g, request

from shared.queries import Page

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
    data: Sequence[Any], page: int | None, page_size: int, total: int,
    next_cursor: str | None = None,
) -> dict[str, Any]:
    """The list body with request id, latency so far, page numbers and the next cursor."""
    return {
        "request_id": g.request_id,
        "api_latency_ms": round((time.perf_counter() - g.request_started) * 1000, 3),
        "data": list(data),
        "pagination": {
            "page": page,
            "page_size": page_size,
            "total": total,
            "total_pages": (total + page_size - 1) // page_size,
            "next_cursor": next_cursor,
        },
    }


def paged(page: Page, args: dict[str, Any]) -> dict[str, Any]:
    """The list body for a `shared.queries.Page` fetched with the request's paging arguments."""
    number = None if args.get("cursor") else args["page"]
    return envelope(page.rows, number, args["page_size"], page.total, page.next_cursor)


def page_window(args: dict[str, Any]) -> dict[str, Any]:
    """offset/limit/cursor keyword arguments for a query function, from page/page_size/cursor."""
    return {"offset": (args["page"] - 1) * args["page_size"], "limit": args["page_size"],
            "cursor": args.get("cursor")}
