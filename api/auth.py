"""Bearer-token check for write endpoints (constant-time compare, token only in the header)."""
from __future__ import annotations

import functools
import hmac
from typing import Any, Callable, TypeVar

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
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            message = "missing bearer token in the Authorization header"
            if any(k in request.args for k in ("token", "access_token", "api_token")):
                message = "tokens in the query string are refused; use the Authorization header"
            abort(401, message=message, headers=_CHALLENGE)
        if not hmac.compare_digest(token.strip().encode(), expected.encode()):
            abort(403, message="invalid bearer token")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
