"""Bearer-token check for write endpoints (constant-time compare, token only in the header).

Refused requests count in a quota of their own (api.http.limits), not in the write quota: a
client guessing tokens cannot use up the operator's POST /jobs quota, and once it has used up
its own, its writes are refused with 429 before any comparison.
"""
from __future__ import annotations

import functools
import hmac
from typing import Any, Callable, NoReturn, TypeVar

from flask import current_app, request
from flask_smorest import abort

F = TypeVar("F", bound=Callable[..., Any])

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="kasparro"'}


def require_token(view: F) -> F:
    """Refuse the request with 401 (no token) or 403 (wrong token) before the view runs."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        expected = current_app.config["SETTINGS"].api_token
        if not expected:
            abort(503, message="API_TOKEN is not configured; writes are disabled")
        limiter = current_app.extensions.get("rate_limiter")
        if limiter is not None:
            limiter.guard_write()
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            message = "missing bearer token in the Authorization header"
            if any(k in request.args for k in ("token", "access_token", "api_token")):
                message = "tokens in the query string are refused; use the Authorization header"
            _refuse(limiter, 401, message, _CHALLENGE)
        if not hmac.compare_digest(token.strip().encode(), expected.encode()):
            _refuse(limiter, 403, "invalid bearer token")
        if limiter is not None:
            limiter.write_allowed()
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _refuse(limiter: Any, code: int, message: str, headers: dict[str, str] | None = None
            ) -> NoReturn:
    if limiter is not None:
        limiter.write_refused()
    abort(code, message=message, headers=headers)
    raise AssertionError("abort() raises")  # pragma: no cover
