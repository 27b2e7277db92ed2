"""gunicorn settings of the API, the one definition `make run`, docker compose and `make bench` use.

`gunicorn -c python:api.gunicorn_conf "api:create_app()" -b HOST:PORT`; only the address
differs between them (a setting given on the command line overrides the one here).

Chosen with bench case 4 (64 connections from wrk on the same 2-core machine, /data and
/health/live; figures in README "Benchmarks"):
- `sync` workers. Each request is a new connection (sync workers close after each
  answer), yet this gave the best p99: the kernel's accept queue serves connections in
  arrival order. `gthread` (2 or 4 threads, keep-alive) gave about the same requests/s
  but 1.5-2.5x the p99: threads of one process take turns on the GIL, and a keep-alive
  connection that just got an answer can be served again before older ones.
- 2 workers, one per core. 3 gave no more requests/s and a worse /data p99, 4 less of both:
  the load generator, PostgreSQL and Redis need the cores too.
- The access log stays on: it is the only record of each request's status. gunicorn's own
  logger builds a dict of every request header, response header and WSGI environ entry for
  each line: 48 us per line, measured, of a ~600 us cached /data request. `AccessLogger`
  computes just the atoms of the default format, the same line, in 24 us.
"""
from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger


class AccessLogger(Logger):
    """gunicorn's logger, with the access-log atoms of the default (combined) format only.

    A custom `access_log_format` may use other atoms; those print as '-' (gunicorn's rule for
    unknown atoms).
    """

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any
              ) -> dict[str, Any]:
        """h l u t r s b f a, as gunicorn computes them."""
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        sent = getattr(resp, "sent", None)
        return {
            "h": environ.get("REMOTE_ADDR", "-"),
            "l": "-",
            "u": self._get_user(environ) or "-",
            "t": self.now(),
            "r": f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}",
            "s": status,
            "b": str(sent) if sent is not None else "-",
            "f": environ.get("HTTP_REFERER", "-"),
            "a": environ.get("HTTP_USER_AGENT", "-"),
        }


workers = 2
worker_class = "sync"
accesslog = "-"
logger_class = "api.gunicorn_conf.AccessLogger"
# The default control socket (~/.gunicorn) would clash between instances on one machine.
control_socket_disable = True
