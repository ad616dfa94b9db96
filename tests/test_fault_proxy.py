"""The fault proxy, over real sockets: an echo server upstream, a blocking client in front.

Each mode is checked by what a client on the far side of the proxy really sees
(bytes back, silence, EOF, a reset) and what the upstream sees, never by the proxy's
own word alone. Every wait is bounded.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from harness._process import wait_for
from harness.faults.proxy import MODES, FaultProxy

RECV_TIMEOUT_S = 2.0
SILENCE_S = 0.5


class _EchoServer(socketserver.ThreadingTCPServer):
    """Echoes every byte; remembers how many connections it accepted and how each ended."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.accepted = 0
        self.endings: list[str] = []  # "eof" or "reset", one per finished connection
        self.open_sockets: set[socket.socket] = set()
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return self.server_address[1]


class _EchoHandler(socketserver.BaseRequestHandler):
    server: _EchoServer

    def handle(self) -> None:
        with self.server.lock:
            self.server.accepted += 1
            self.server.open_sockets.add(self.request)
        ending = "eof"
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except ConnectionResetError:
            ending = "reset"
        except OSError:  # closed by the fixture's teardown
            ending = "closed"
        with self.server.lock:
            self.server.endings.append(ending)
            self.server.open_sockets.discard(self.request)


@pytest.fixture
def echo() -> Iterator[_EchoServer]:
    server = _EchoServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        with server.lock:
            for sock in list(server.open_sockets):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        server.server_close()
        thread.join(2)


@pytest.fixture
def proxy(echo: _EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo.port, name="test-proxy") as running:
        yield running


def _connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=RECV_TIMEOUT_S)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        if not chunk:
            raise AssertionError(f"EOF after {len(got)} of {n} bytes")
        got += chunk
    return got


def _round_trip(sock: socket.socket, payload: bytes) -> float:
    began = time.monotonic()
    sock.sendall(payload)
    assert _recv_exactly(sock, len(payload)) == payload
    return time.monotonic() - began


def _assert_silent(sock: socket.socket) -> None:
    """Nothing comes back within SILENCE_S, and the socket is neither at EOF nor reset."""
    sock.settimeout(SILENCE_S)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return
    finally:
        sock.settimeout(RECV_TIMEOUT_S)
    raise AssertionError(f"expected silence, got {data!r}" if data else "expected silence, got EOF")


def _stat_reaches(proxy: FaultProxy, key: str, at_least: int) -> bool:
    return bool(wait_for(lambda: proxy.stats()[key] >= at_least, timeout_s=RECV_TIMEOUT_S))


def test_pass_echoes_and_counts_forwarded_bytes(proxy: FaultProxy) -> None:
    assert proxy.alive() and proxy.mode == "pass"
    assert not proxy.wait_for_connections(1, timeout_s=0.1)
    payload = b"hello through the proxy " * 1000
    with _connect(proxy) as client:
        assert proxy.wait_for_connections(1, timeout_s=RECV_TIMEOUT_S)
        _round_trip(client, payload)
        assert _stat_reaches(proxy, "bytes_forwarded", 2 * len(payload)), proxy.stats()
    stats = proxy.stats()
    assert stats["connections_total"] == 1
    assert stats["bytes_dropped"] == 0 and stats["resets"] == 0
    assert wait_for(lambda: proxy.stats()["connections_open"] == 0, timeout_s=RECV_TIMEOUT_S)


def test_latency_delays_each_direction_and_heal_removes_it(proxy: FaultProxy) -> None:
    with _connect(proxy) as client:
        _round_trip(client, b"warm")
        proxy.set_mode("latency", latency_ms=150)
        assert proxy.mode == "latency"
        slow = _round_trip(client, b"slow")
        assert slow >= 0.3, f"round trip took {slow:.3f} s; two 150 ms delays expected"
        proxy.heal()
        fast = _round_trip(client, b"fast")
        assert fast < 0.15, f"round trip took {fast:.3f} s after heal"


def test_blackhole_holds_an_open_connection_silent_and_heal_resumes_it(
        proxy: FaultProxy) -> None:
    with _connect(proxy) as client:
        _round_trip(client, b"before")
        proxy.set_mode("blackhole")
        client.sendall(b"lost in the hole")
        _assert_silent(client)
        assert _stat_reaches(proxy, "bytes_dropped", len(b"lost in the hole")), proxy.stats()
        assert proxy.stats()["connections_open"] == 1
        proxy.heal()
        _round_trip(client, b"after heal")  # same connection; the dropped bytes stay lost


def test_blackhole_holds_a_new_connection_without_reaching_upstream(
        proxy: FaultProxy, echo: _EchoServer) -> None:
    proxy.set_mode("blackhole")
    with _connect(proxy) as client:
        assert proxy.wait_for_connections(1, timeout_s=RECV_TIMEOUT_S)
        client.sendall(b"startup packet")
        _assert_silent(client)
        assert _stat_reaches(proxy, "bytes_dropped", len(b"startup packet")), proxy.stats()
        assert echo.accepted == 0, "a held connection must not reach the upstream"
        proxy.heal()
        _round_trip(client, b"after heal")
        assert echo.accepted == 1


def test_reset_aborts_open_and_new_connections_until_heal(
        proxy: FaultProxy, echo: _EchoServer) -> None:
    with _connect(proxy) as client:
        _round_trip(client, b"before")
        proxy.set_mode("reset")
        with pytest.raises(ConnectionResetError):
            client.recv(1)
    assert wait_for(lambda: len(echo.endings) == 1, timeout_s=RECV_TIMEOUT_S), echo.endings
    assert echo.endings == ["reset"]
    # The kernel completes the handshake before the proxy accepts, so the reset can
    # reach the client during connect() or on its first read.
    with pytest.raises(ConnectionResetError), _connect(proxy) as late:
        late.sendall(b"x")
        late.recv(1)
    assert proxy.stats()["resets"] == 2
    assert echo.accepted == 1, "a connection reset on accept must not reach the upstream"
    assert "reset on accept" in proxy.log_tail()
    proxy.heal()
    with _connect(proxy) as healed:
        _round_trip(healed, b"healed")


def test_stop_closes_everything_and_is_idempotent(echo: _EchoServer) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port, name="stopping")
    proxy.start()
    port = proxy.port
    client = _connect(proxy)
    try:
        _round_trip(client, b"before stop")
        began = time.monotonic()
        proxy.stop()
        assert time.monotonic() - began < 2
        try:
            assert client.recv(1) == b""
        except ConnectionResetError:
            pass
    finally:
        client.close()
    assert not proxy.alive()
    assert "fault-proxy-stopping" not in {t.name for t in threading.enumerate()}
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=RECV_TIMEOUT_S).close()
    assert wait_for(lambda: len(echo.endings) == 1, timeout_s=RECV_TIMEOUT_S), echo.endings
    proxy.stop()


def test_unknown_mode_names_the_known_ones(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError) as raised:
        proxy.set_mode("slow")
    for mode in MODES:
        assert mode in str(raised.value)
    with pytest.raises(ValueError, match="latency_ms"):
        proxy.set_mode("latency")
    assert proxy.mode == "pass"
