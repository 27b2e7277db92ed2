"""A real local webhook receiver: records each JSON POST; answers 200, 500, or hangs."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """A real HTTP server in a thread that records JSON POSTs; `mode` ok, 500 or hang."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.mode = "ok"
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.received.append((self.path, body))
                if receiver.mode == "hang":
                    receiver.release.wait(30)
                    return
                self.send_response(500 if receiver.mode == "500" else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        """What arrived since the last call."""
        got, self.received = self.received, []
        return got

    def close(self) -> None:
        """Release hung handlers and stop serving."""
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
