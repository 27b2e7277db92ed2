"""Request-body parsing for JSON endpoints: 415 for a body that is not JSON, 400 for one too deep.

webargs' FlaskParser quietly treats a body sent with another Content-Type as absent, so
`POST /jobs` with `text/plain` and `{"sources": ["csv"]}` queued every source; and
`json.loads` raises RecursionError (not a ValueError) on a deeply nested document, which
became a 500. Both are the client's mistake and are answered as such here.
"""
from __future__ import annotations

import json
from typing import Any

import flask
from webargs import core
from webargs.flaskparser import FlaskParser, abort, is_json_request

# Deeper than any body an endpoint documents ({"sources": [...]} is 2): refused before
# json.loads, whose recursion would otherwise depend on how deep the stack already is.
MAX_JSON_DEPTH = 32

_OPENERS = frozenset(b"[{")
_CLOSERS = frozenset(b"]}")


def json_depth_exceeds(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the arrays/objects in `data` nest deeper than `limit` (strings skipped)."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False  # cannot nest deeper than the number of openers
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # closing quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in _OPENERS:
            depth += 1
            if depth > limit:
                return True
        elif byte in _CLOSERS:
            depth -= 1
    return False


class JsonBodyParser(FlaskParser):
    """FlaskParser whose `json` location refuses non-JSON bodies (415) and deep nesting (400)."""

    def _raw_load_json(self, req: flask.Request) -> Any:
        data = req.get_data(cache=True)
        if not is_json_request(req):
            if data.strip():
                abort(415, messages={"headers": {"Content-Type": [
                    "the body must be sent as application/json"]}})
            return core.missing
        if json_depth_exceeds(data):
            abort(400, messages={"json": [
                f"JSON body nested deeper than {MAX_JSON_DEPTH} levels"]})
        try:
            return core.parse_json(data)
        except RecursionError:  # pragma: no cover - the depth check comes first
            abort(400, messages={"json": ["JSON body nested too deeply"]})

    def _handle_invalid_json_error(self, error: json.JSONDecodeError | UnicodeDecodeError,
                                   req: flask.Request, *args: Any, **kwargs: Any) -> Any:
        abort(400, exc=error, messages={"json": ["Invalid JSON body."]})
