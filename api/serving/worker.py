"""gunicorn's sync worker, but a request reaches it only once its head (and small body) arrived.

A `sync` worker reads a request with blocking calls, so a client that sends its headers a
line at a time holds the worker for as long as it keeps sending: two such clients froze both
workers of the API (issue 14), and `/health/live` timed out. This worker accepts connections
and reads them without blocking, many at a time, in one event loop; a connection is served
(by the unchanged sync code path, one at a time) only when its request head is complete and a
body of known length has arrived in full. A client gets HEAD_DEADLINE seconds for that, then
is closed; at most MAX_PENDING connections wait per worker (the oldest is closed first). What
a fast client sees is the sync worker's behaviour, which bench case 4 chose (docs/benchmarks.md).
"""
from __future__ import annotations

import errno
import os
import re
import selectors
import time
from dataclasses import dataclass, field
from typing import Any

from gunicorn import http, util
from gunicorn.http.errors import NoMoreData
from gunicorn.workers.sync import SyncWorker

# Seconds a connection has to deliver its request head and (Content-Length) body.
HEAD_DEADLINE = 10.0
# Connections reading their request at once, per worker process.
MAX_PENDING = 512
# Largest request we buffer before serving: a full head plus the app's 64 KiB body limit. A
# longer declared body is handed to the app as soon as the head is in (it answers 413).
MAX_BUFFERED_BODY = 64 * 1024
MAX_HEAD = 64 * 1024
# After the head, reads of what is left (a chunked body) time out instead of blocking forever.
BODY_READ_TIMEOUT = 10.0
# Connections accepted per listener readiness, so one busy listener cannot starve the others.
ACCEPT_BURST = 64

_CONTENT_LENGTH = re.compile(rb"(?im)^content-length[ \t]*:[ \t]*(\d{1,18})[ \t]*\r?$")
_CHUNKED = re.compile(rb"(?im)^transfer-encoding[ \t]*:")
_BAD_REQUEST = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
                b"Content-Length: 0\r\n\r\n")


@dataclass
class _Pending:
    client: Any
    addr: Any
    listener: Any
    deadline: float
    buf: bytearray = field(default_factory=bytearray)


class HeadFirstWorker(SyncWorker):
    """A sync worker that never blocks on a client still sending its request."""

    def run(self) -> None:
        """Accept and read connections without blocking; serve complete requests one by one."""
        if self.cfg.is_ssl:  # TLS needs its handshake before any read: plain sync behaviour
            super().run()
            return
        for listener in self.sockets:
            listener.setblocking(False)
        self._pending: dict[int, _Pending] = {}
        self._selector = selectors.DefaultSelector()
        for listener in self.sockets:
            self._selector.register(listener, selectors.EVENT_READ, "listener")
        self._selector.register(self.PIPE[0], selectors.EVENT_READ, "pipe")
        tick = self.timeout or 0.5
        try:
            while self._alive():
                self.notify()
                wait = tick
                if self._pending:
                    now = time.monotonic()
                    self._expire(now)
                    if self._pending:
                        soonest = min(p.deadline for p in self._pending.values())
                        wait = max(0.0, min(tick, soonest - now))
                try:
                    events = self._selector.select(wait)
                except OSError as exc:
                    if exc.errno == errno.EINTR:
                        continue
                    raise
                for key, _mask in events:
                    if not self._alive():
                        break
                    if key.data == "pipe":
                        try:
                            os.read(self.PIPE[0], 1)
                        except OSError:
                            pass
                    elif key.data == "listener":
                        self._accept_burst(key.fileobj)
                    else:
                        self._receive(key.data)
                if not self.is_parent_alive():
                    return
        finally:
            for pending in list(self._pending.values()):
                self._drop(pending)
            self._selector.close()

    def _alive(self) -> bool:
        """Whether the arbiter still wants this worker (a signal handler clears `alive`).

        Read through a call so the type checker does not take the loop's test as fixed.
        """
        return bool(self.alive)

    def _accept_burst(self, listener: Any) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                client, addr = listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                    return
                raise
            client.setblocking(False)
            util.close_on_exec(client)
            pending = _Pending(client, addr, listener, time.monotonic() + HEAD_DEADLINE)
            # Most clients send the request with the connection: serve it without a round
            # through the selector.
            if self._read_available(pending) and self._ready(pending):
                self._serve(pending)
                continue
            if pending.client.fileno() < 0:
                continue  # closed while reading
            if len(self._pending) >= MAX_PENDING:
                oldest = min(self._pending.values(), key=lambda p: p.deadline)
                self._drop(oldest)
            self._pending[client.fileno()] = pending
            self._selector.register(client, selectors.EVENT_READ, pending)
            self.notify()

    def _receive(self, pending: _Pending) -> None:
        if self._read_available(pending) and self._ready(pending):
            self._selector.unregister(pending.client)
            self._pending.pop(pending.client.fileno(), None)
            self._serve(pending)

    def _read_available(self, pending: _Pending) -> bool:
        """Read what the socket holds; False if the connection ended (it is then closed)."""
        while True:
            try:
                data = pending.client.recv(65536)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                self._drop(pending)
                return False
            if not data:
                self._drop(pending)
                return False
            pending.buf += data
            if len(pending.buf) > MAX_HEAD + MAX_BUFFERED_BODY or len(data) < 65536:
                return True

    def _ready(self, pending: _Pending) -> bool:
        """Whether the request head (and a small body of known length) is all in."""
        buf = pending.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                self._refuse(pending)
            return False
        head = bytes(buf[:end])
        if _CHUNKED.search(head):
            return True
        match = _CONTENT_LENGTH.search(head)
        length = int(match.group(1)) if match else 0
        if length > MAX_BUFFERED_BODY:
            return True
        return len(buf) >= end + 4 + length

    def _expire(self, now: float) -> None:
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            self.log.debug("Closing a connection that did not send its request in %ss",
                           HEAD_DEADLINE)
            self._drop(pending)

    def _refuse(self, pending: _Pending) -> None:
        try:
            pending.client.send(_BAD_REQUEST)
        except OSError:
            pass
        self._drop(pending)

    def _drop(self, pending: _Pending) -> None:
        fileno = pending.client.fileno()
        if fileno >= 0 and self._pending.get(fileno) is pending:
            del self._pending[fileno]
            try:
                self._selector.unregister(pending.client)
            except (KeyError, ValueError):
                pass
        util.close(pending.client)

    def _serve(self, pending: _Pending) -> None:
        client = pending.client
        client.setblocking(True)
        client.settimeout(BODY_READ_TIMEOUT)
        self.handle_buffered(pending.listener, client, pending.addr, bytes(pending.buf))

    def handle_buffered(self, listener: Any, client: Any, addr: Any, data: bytes) -> None:
        """SyncWorker.handle, with the bytes already read put back in front of the socket."""
        req = None
        try:
            parser = http.get_parser(self.cfg, client, addr)
            parser.unreader.unread(data)
            req = next(parser)
            self.handle_request(listener, req, client, addr)
        except NoMoreData as exc:
            self.log.debug("Ignored premature client disconnection. %s", exc)
        except StopIteration as exc:
            self.log.debug("Closing connection. %s", exc)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, None):
                self.log.exception("Socket error processing request.")
        except BaseException as exc:
            self.handle_error(req, client, addr, exc)
        finally:
            util.close_graceful(client)
