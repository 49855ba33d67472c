"""A small HTTP/1.0 server for read-only pages that idle or slow clients cannot starve.

``http.server.ThreadingHTTPServer`` gives every connection a thread that blocks reading the
request for as long as the client keeps the socket open: a few thousand idle connections use up
the threads (or the process's file descriptors) and the health probe stops answering. Here one
thread accepts connections and collects each request's head without blocking (a selector); only
a complete request reaches a worker thread from a fixed pool. The limits (:class:`ServerLimits`):

- a connection must deliver its whole request head within ``request_timeout_seconds`` of being
  accepted (a trickling client gets no more time than an idle one), or it is closed; the same
  timeout bounds sending the response;
- at most ``max_waiting`` connections may be sending their request head (fewer when the process
  may open few files); when full, the *oldest* is closed to make room, so a fresh scrape or probe
  always gets in;
- ``max_workers`` threads answer complete requests and ``max_queued`` more may wait for one;
  beyond that a request is answered ``503`` at once (load shedding).

Requests have no body (GET only); a head over ``max_head_bytes`` is answered ``431``. Every
response closes its connection and carries :data:`SECURITY_HEADERS`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import queue
import resource
import selectors
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

logger = logging.getLogger(__name__)

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Content-Type-Options", "nosniff"),
    # the pages are self-contained: inline styles, images from this origin, no scripts, no frames
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("Referrer-Policy", "no-referrer"),
)


@dataclass(frozen=True)
class ServerLimits:
    request_timeout_seconds: float = 5.0
    max_waiting: int = 512
    max_workers: int = 8
    max_queued: int = 64
    max_head_bytes: int = 16384
    listen_backlog: int = 1024


def waiting_cap(max_waiting: int) -> int:
    """``max_waiting``, lowered to a quarter of the open-files limit: idle clients must not take
    the descriptors the service needs for its broker and Redis connections."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return max_waiting
    return max(8, min(max_waiting, soft // 4))


class PrefetchedRequestHandler(BaseHTTPRequestHandler):
    """Answers one request whose head the server has already read: ``request`` is ``(socket, head)``."""

    server_version = "lithowatch"
    sys_version = ""

    def setup(self) -> None:
        connection, head = self.request
        self.connection = connection
        self.rfile = io.BytesIO(head)
        self.wfile = _SocketWriter(connection)

    def finish(self) -> None:
        self.rfile.close()

    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


class _SocketWriter(io.BufferedIOBase):
    """Unbuffered writes that send everything (``sendall``, bounded by the socket's timeout)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        self._sock.sendall(data)
        with memoryview(data) as view:
            return view.nbytes


@dataclass
class _Pending:
    """A connection still sending its request head."""

    sock: socket.socket
    address: tuple[str, int]
    deadline: float
    head: bytearray


def _canned(status: int, reason: str, extra: str = "") -> bytes:
    body = f"{reason.lower()}\n".encode()
    headers = "".join(f"{name}: {value}\r\n" for name, value in SECURITY_HEADERS)
    return (
        f"HTTP/1.0 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n{extra}{headers}\r\n"
    ).encode() + body


_BUSY = _canned(503, "Service Unavailable", "Retry-After: 1\r\n")
_HEAD_TOO_LARGE = _canned(431, "Request Header Fields Too Large")


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class GuardedHTTPServer:
    """Listens on ``address``; ``handler`` (a :class:`PrefetchedRequestHandler`) answers each request."""

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[PrefetchedRequestHandler],
        limits: ServerLimits | None = None,
    ) -> None:
        self.limits = limits or ServerLimits()
        self._handler = handler
        self._max_waiting = waiting_cap(self.limits.max_waiting)
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._listener = socket.create_server(address, family=family, backlog=self.limits.listen_backlog)
        self._listener.setblocking(False)
        self.server_address: tuple[str, int] = self._listener.getsockname()[:2]
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._pending: OrderedDict[socket.socket, _Pending] = OrderedDict()  # oldest (first deadline) first
        self._requests: queue.Queue[tuple[socket.socket, tuple[str, int], bytes] | None] = queue.Queue()
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._stopping = threading.Event()
        self._loop: threading.Thread | None = None
        self._workers: list[threading.Thread] = []
        self._fd_warned_at = -1e9

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self, name: str = "http") -> None:
        self._workers = [
            threading.Thread(target=self._work, name=f"{name}-worker-{i}", daemon=True)
            for i in range(self.limits.max_workers)
        ]
        for worker in self._workers:
            worker.start()
        self._loop = threading.Thread(target=self._serve, name=name, daemon=True)
        self._loop.start()

    def stop(self) -> None:
        """Stops accepting, closes waiting connections; requests being answered finish on their own."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_write.send(b"x")
        if self._loop is not None:
            self._loop.join()
        for pending in self._pending.values():
            _close(pending.sock)
        self._pending.clear()
        for _ in self._workers:
            self._requests.put(None)
        self._selector.close()
        self._listener.close()
        self._wake_read.close()
        self._wake_write.close()

    # ---- the accepting thread ----------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                self._serve_once()
            except Exception:  # the health probe depends on this thread: never let it die
                logger.exception("HTTP server loop failed; continuing")
                time.sleep(0.05)

    def _serve_once(self) -> None:
        timeout = 0.5
        if self._pending:
            first = next(iter(self._pending.values()))
            timeout = min(timeout, max(0.0, first.deadline - time.monotonic()))
        for key, _events in self._selector.select(timeout):
            if key.fileobj is self._listener:
                self._accept()
            elif key.fileobj is self._wake_read:
                with contextlib.suppress(OSError):
                    self._wake_read.recv(64)
            else:
                self._read(key.data)
        self._expire(time.monotonic())

    def _accept(self) -> None:
        for _ in range(256):  # then let the waiting connections have a turn
            try:
                sock, address = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return  # e.g. the client gave up before we accepted
                if not self._pending:
                    self._warn_out_of_files(exc)
                    time.sleep(0.05)  # the connection stays queued; do not spin
                    return
                self._drop(next(iter(self._pending.values())))
                continue
            sock.setblocking(False)
            if len(self._pending) >= self._max_waiting:
                self._drop(next(iter(self._pending.values())))
            pending = _Pending(sock, address[:2], time.monotonic() + self.limits.request_timeout_seconds,
                               bytearray())
            self._pending[sock] = pending
            self._selector.register(sock, selectors.EVENT_READ, pending)

    def _warn_out_of_files(self, exc: OSError) -> None:
        now = time.monotonic()
        if now - self._fd_warned_at > 60.0:
            self._fd_warned_at = now
            logger.warning("HTTP server cannot accept connections: %s", exc)

    def _read(self, pending: _Pending) -> None:
        if self._pending.get(pending.sock) is not pending:
            return  # dropped earlier in this round (made room for a newer connection)
        try:
            chunk = pending.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(pending)
            return
        if not chunk:
            self._drop(pending)
            return
        pending.head += chunk
        if b"\r\n\r\n" in pending.head or b"\n\n" in pending.head:
            self._forget(pending)
            self._dispatch(pending)
        elif len(pending.head) > self.limits.max_head_bytes:
            self._forget(pending)
            self._reply_and_close(pending.sock, _HEAD_TOO_LARGE)

    def _expire(self, now: float) -> None:
        while self._pending:
            first = next(iter(self._pending.values()))
            if first.deadline > now:
                return
            self._drop(first)

    def _forget(self, pending: _Pending) -> None:
        self._selector.unregister(pending.sock)
        del self._pending[pending.sock]

    def _drop(self, pending: _Pending) -> None:
        self._forget(pending)
        _close(pending.sock)

    def _dispatch(self, pending: _Pending) -> None:
        with self._in_flight_lock:
            busy = self._in_flight >= self.limits.max_workers + self.limits.max_queued
            if not busy:
                self._in_flight += 1
        if busy:
            self._reply_and_close(pending.sock, _BUSY)
            return
        pending.sock.settimeout(self.limits.request_timeout_seconds)
        self._requests.put((pending.sock, pending.address, bytes(pending.head)))

    @staticmethod
    def _reply_and_close(sock: socket.socket, response: bytes) -> None:
        with contextlib.suppress(OSError):
            sock.send(response)  # non-blocking: a short answer fits the socket buffer, or is lost
        _close(sock)

    # ---- the worker threads ------------------------------------------------------------------
    def _work(self) -> None:
        while (item := self._requests.get()) is not None:
            sock, address, head = item
            try:
                self._handler((sock, head), address, self)  # type: ignore[arg-type]  # see setup()
            except OSError:
                pass  # the client went away or stopped reading
            except Exception:
                logger.exception("HTTP request from %s failed", address[0])
            finally:
                _close(sock)
                with self._in_flight_lock:
                    self._in_flight -= 1
