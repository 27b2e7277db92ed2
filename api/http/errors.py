"""One error body for every non-2xx answer; domain exceptions mapped to HTTP in one place."""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from flask_smorest import Api
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException, InternalServerError, UnprocessableEntity
from werkzeug.http import HTTP_STATUS_CODES

from api.http.read_timeout import RETRY_AFTER_SECONDS, count_timeout, is_statement_timeout
from api.schemas.common import ErrorSchema
from shared.errors import Conflict, NotFound
from shared.queries.assets import RangeTooLong
from shared.queries.paging import InvalidCursor

log = logging.getLogger(__name__)


class JsonErrorsApi(Api):
    """flask-smorest's Api; every error body is {code, status, message[, errors]}."""

    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error: HTTPException) -> Any:
        """The standard body; `message` falls back to the exception's description."""
        payload, code, headers = super().handle_http_exception(error)
        if "message" not in payload:
            payload["message"] = _message_of(error)
        # Keep the exception's own headers (Allow on a 405, WWW-Authenticate, ...).
        merged = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        merged.update(headers or {})
        return payload, code, merged


def _message_of(error: HTTPException) -> str:
    if error.code == 429:
        return f"rate limit exceeded ({error.description}); retry after the Retry-After seconds"
    return str(error.description or error.name)


def init_error_handlers(app: Flask, api: JsonErrorsApi) -> None:
    """Map domain exceptions and anything unexpected onto the standard body."""

    def _answer(code: int, message: str, errors: dict[str, Any] | None = None) -> Any:
        payload: dict[str, Any] = {"code": code, "status": HTTP_STATUS_CODES[code],
                                   "message": message}
        if errors is not None:
            payload["errors"] = errors
        return payload, code

    @app.errorhandler(NotFound)
    def _not_found(exc: NotFound) -> Any:
        return _answer(404, str(exc))

    @app.errorhandler(Conflict)
    def _conflict(exc: Conflict) -> Any:
        return _answer(409, str(exc))

    @app.errorhandler(InvalidCursor)
    def _bad_cursor(exc: InvalidCursor) -> Any:
        return _answer(422, "invalid cursor", {"query": {exc.field: [str(exc)]}})

    @app.errorhandler(RangeTooLong)
    def _range_too_long(exc: RangeTooLong) -> Any:
        # As the arguments' own range check answers (api.schemas.data.HistoryArgsSchema).
        return _answer(422, str(UnprocessableEntity.description),
                       {"query": {exc.field: [str(exc)]}})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        # Anything unexpected becomes the standard 500 body: no stack trace leaves the process.
        if isinstance(exc, HTTPException):
            return api.handle_http_exception(exc)
        log.exception("unhandled error")
        return api.handle_http_exception(InternalServerError())

    @app.errorhandler(OperationalError)
    def _database_error(exc: OperationalError) -> Any:
        # A read past its statement_timeout is the database being slow, not a bug: 503, and
        # the client may come back (api/http/read_timeout.py). Any other database error is a 500.
        if not is_statement_timeout(exc):
            return _unexpected(exc)
        count_timeout()
        payload, code = _answer(
            503, "the database did not answer this read within its time limit; retry after "
                 "the Retry-After seconds")
        return payload, code, {"Retry-After": str(RETRY_AFTER_SECONDS)}
