"""gunicorn settings of the API, the one definition `make run`, docker compose and `make bench` use.

`gunicorn -c python:api.serving.gunicorn_conf "api:create_app()" -b HOST:PORT`; only the address
differs between them (a setting given on the command line overrides the one here).

Chosen with bench case 4 (64 connections from wrk on the same 2-core machine, /data and
/health/live; figures in docs/benchmarks.md):
- `sync` workers. Each request is a new connection (sync workers close after each
  answer), yet this gave the best p99: the kernel's accept queue serves connections in
  arrival order. `gthread` (2 or 4 threads, keep-alive) gave about the same requests/s
  but a worse p99: threads of one process take turns on the GIL, and a keep-alive
  connection that just got an answer can be served again before older ones.
- 2 workers, one per core. 3 gave no more requests/s and a worse /data p99, 4 less of both:
  the load generator, PostgreSQL and Redis need the cores too.
- The access log stays on: it is the only record of each request's status. gunicorn's own
  logger builds a dict of every request header, response header and WSGI environ entry for
  each line, a measurable share of a cached /data request. `AccessLogger` computes just
  the atoms of the default format, the same line, in half the time.

Hostile clients (issue 14):
- Slow clients: the worker class is `api.serving.worker.HeadFirstWorker`, the sync worker
  fed only complete requests (a client sending its headers a line at a time waits in an
  event loop, not in the worker; closed after 10 s). Tested by
  tests/e2e/test_api_hardening_serving.py: /health/live keeps answering while such clients
  hold connections open.
- Request limits: a request line of at most 4094 bytes (a /data cursor is at most 3072),
  50 header fields of at most 8190 bytes each.
- Secrets: the access log line goes through `shared.logging_setup.redact` (token-like query
  parameters, configured secrets), never names the Basic-auth user, and gunicorn's error log
  has the same filter as the app's logs.
"""
from __future__ import annotations

from collections.abc import MutableMapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from gunicorn.glogging import Logger
from gunicorn.http import Request
from gunicorn.http.wsgi import Response

if TYPE_CHECKING:  # a stub-only TypedDict: what gunicorn's format string may name
    from gunicorn.glogging import _AtomsDict

from shared.logging_setup import add_redacting_filter, redact_patterns, redact_values


class AccessLogger(Logger):
    """gunicorn's logger, with the access-log atoms of the default (combined) format only.

    A custom `access_log_format` may use other atoms; those print as '-' (gunicorn's rule for
    unknown atoms).
    """

    def setup(self, cfg: Any) -> None:
        """gunicorn's setup, then the app's secret filter on the error log's handlers."""
        super().setup(cfg)
        self._secrets = _configured_secrets()
        add_redacting_filter(self.error_log.handlers, None, self._secrets)

    def _scrub(self, text: str) -> str:
        return redact_patterns(redact_values(text, getattr(self, "_secrets", ())))

    def atoms(self, resp: Response, req: Request, environ: MutableMapping[str, Any],
              request_time: timedelta) -> _AtomsDict:
        """h l u t r s b f a, as gunicorn computes them; secrets redacted, no user name."""
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        sent = getattr(resp, "sent", None)
        return {
            "h": environ.get("REMOTE_ADDR", "-"),
            "l": "-",
            # gunicorn prints the user part of a Basic Authorization header: a credential.
            "u": "-",
            "t": self.now(),
            "r": self._scrub(
                f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}"),
            "s": status if status is not None else "-",
            "b": str(sent) if sent is not None else "-",
            "f": self._scrub(environ.get("HTTP_REFERER", "-")),
            "a": self._scrub(environ.get("HTTP_USER_AGENT", "-")),
        }


def _configured_secrets() -> tuple[str, ...]:
    """The secret values of the environment's settings (none if the settings do not load)."""
    try:
        from shared.config import get_settings

        return get_settings().redacted_secrets()
    except Exception:  # noqa: BLE001 - the app itself reports bad settings when it loads
        return ()


workers = 2
worker_class = "api.serving.worker.HeadFirstWorker"
timeout = 30
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190
accesslog = "-"
logger_class = "api.serving.gunicorn_conf.AccessLogger"
# The default control socket (~/.gunicorn) would clash between instances on one machine.
control_socket_disable = True
