"""The metrics/health server on loopback: idle clients cannot starve it, overload is shed with 503,
and every answer carries the security headers."""

from __future__ import annotations

import http.client
import resource
import socket
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from shared.http_server import ServerLimits
from shared.metrics import MetricsServer, Route

IDLE_CONNECTIONS = 2000


def serve(routes: dict[str, Route] | None = None, limits: ServerLimits | None = None) -> MetricsServer:
    return MetricsServer("127.0.0.1", 0, lambda: True, routes, CollectorRegistry(), limits).start()


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    running = serve({"/page": lambda _path: (200, "text/html; charset=utf-8", b"<p>hi</p>")})
    try:
        yield running
    finally:
        running.stop()


def get(port: int, path: str, timeout_seconds: float = 5.0, method: str = "GET") -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_seconds)
    connection.request(method, path)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


@pytest.fixture
def open_files_for_idle_clients() -> Iterator[None]:
    """Room for the idle clients and the server's side of them in this one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 3 * IDLE_CONNECTIONS + 256
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"open-files hard limit {hard} < {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_healthz_answers_while_thousands_of_idle_connections_are_open(
    open_files_for_idle_clients: None,
) -> None:
    running = serve()
    idle: list[socket.socket] = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            idle.append(socket.create_connection(("127.0.0.1", running.port), timeout=5))
        response = get(running.port, "/healthz", timeout_seconds=1.0)
        assert response.status == 200
        assert get(running.port, "/metrics", timeout_seconds=1.0).status == 200
    finally:
        for sock in idle:
            sock.close()
        running.stop()


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def test_an_idle_or_trickling_client_is_dropped_without_an_answer() -> None:
    running = serve(limits=ServerLimits(request_timeout_seconds=0.3))
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as idle:
            assert read_until_closed(idle) == b""
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as trickling:
            trickling.sendall(b"GET /healthz HTTP/1.0\r\n")  # never finishes its head
            assert read_until_closed(trickling) == b""
        assert get(running.port, "/healthz").status == 200
    finally:
        running.stop()


def test_requests_beyond_the_workers_and_queue_are_answered_503_at_once() -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(_path: str) -> tuple[int, str, bytes]:
        entered.set()
        release.wait(10)
        return 200, "text/plain", b"slow\n"

    running = serve({"/slow": slow}, ServerLimits(max_workers=1, max_queued=0))
    results: list[int] = []
    try:
        worker = threading.Thread(target=lambda: results.append(get(running.port, "/slow").status))
        worker.start()
        assert entered.wait(5)
        busy = get(running.port, "/healthz")
        assert busy.status == 503 and busy.headers["Retry-After"] == "1"
        assert busy.headers["X-Content-Type-Options"] == "nosniff"
        release.set()
        worker.join(10)
        assert results == [200]
        assert get(running.port, "/healthz").status == 200
    finally:
        release.set()
        running.stop()


def test_an_oversized_request_head_is_refused() -> None:
    running = serve(limits=ServerLimits(max_head_bytes=1024))
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.0\r\nX-Padding: " + b"a" * 4096)
            assert read_until_closed(sock).startswith(b"HTTP/1.0 431 ")
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/healthz", 200), ("GET", "/metrics", 200), ("GET", "/page", 200),
     ("GET", "/nothing", 404), ("POST", "/healthz", 501)],
)
def test_every_answer_carries_the_security_headers(
    server: MetricsServer, method: str, path: str, status: int
) -> None:
    response = get(server.port, path, method=method)
    assert response.status == status
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "Python" not in (response.headers["Server"] or "")


def test_a_failing_page_is_a_500_and_the_server_keeps_answering() -> None:
    def broken(_path: str) -> tuple[int, str, bytes]:
        raise RuntimeError("boom")

    running = serve({"/broken": broken})
    try:
        assert get(running.port, "/broken").status == 500
        assert get(running.port, "/healthz").status == 200
    finally:
        running.stop()
