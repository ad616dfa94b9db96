"""A TCP fault proxy on 127.0.0.1 that can stall, slow or break a network path on cue.

Responsibility: sit between a Celery worker and PostgreSQL or PgBouncer, forward
bytes both ways, and switch at any moment (for open and new connections alike) to
one of four modes:

- ``pass``: forward everything.
- ``latency``: forward everything, each chunk ``latency_ms`` late in each direction,
  order kept (a round trip costs two delays).
- ``blackhole``: both sockets stay open and nothing crosses: bytes read from either
  side are dropped and counted, and an end-of-stream is held back, as a stalled path
  carries no FIN either. A connection accepted during a blackhole is held open with
  no upstream connection at all; the upstream connect happens when the mode leaves
  ``blackhole``. Back in ``pass``, new bytes flow again on the same connections, but
  the bytes dropped meanwhile are gone for good: unlike a real stall, where TCP
  retransmits, the two ends now disagree about the stream (a PostgreSQL client
  waits for a reply to a query the server never saw). That confusion is part of the
  fault.
- ``reset``: every open connection is aborted with a TCP RST on both sides
  (``SO_LINGER`` on with timeout 0, then close), and while the mode stays ``reset``
  every new connection is reset as soon as it is accepted.

No proxy binary ships in Debian or as a wheel, so this one is asyncio: its event loop
runs in a daemon thread of the calling process, so it dies with that process and
nothing outlives the run. Every change of mode is applied inside the loop before
:meth:`FaultProxy.set_mode` returns.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from harness._process import StartStop
from harness.errors import HarnessError

LOOPBACK = "127.0.0.1"
MODES = ("pass", "latency", "blackhole", "reset")
START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5.0
_CHUNK = 65536
# Chunks waiting in one direction before the reader stops reading: in ``latency`` a
# fast sender is held back by TCP flow control instead of filling memory.
_QUEUE_CHUNKS = 64
_LOG_LINES = 2000
_EOF = None  # queue marker: the sending side finished its stream

T = TypeVar("T")


def _set_rst_on_close(writer: asyncio.StreamWriter) -> None:
    # asyncio's abort() only closes the socket, which sends a FIN; with SO_LINGER on
    # and a zero timeout the kernel sends a RST instead.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:  # already closed: nothing left to reset
            pass


class _Link:
    """One proxied connection: the client side, the upstream side once connected, its tasks."""

    def __init__(self, ident: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.ident = ident
        self.client_reader = reader
        self.client_writer = writer
        self.upstream_writer: asyncio.StreamWriter | None = None
        self.pumps: list[asyncio.Task[None]] = []
        self.supervisor: asyncio.Task[Any] | None = asyncio.current_task()

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client_writer, self.upstream_writer) if w is not None]

    def abort(self, *, rst: bool) -> None:
        """Close both sockets now (with a RST if asked) and stop every task of the link."""
        for writer in self.writers():
            if rst:
                _set_rst_on_close(writer)
            writer.transport.abort()
        for task in self.pumps:
            task.cancel()
        if self.supervisor is not None:
            self.supervisor.cancel()


class FaultProxy(StartStop):
    """A TCP proxy from ``127.0.0.1:<port>`` to one upstream, with a switchable fault.

    Args:
        upstream_host: where connections are forwarded (only 127.0.0.1 in this harness).
        upstream_port: the upstream's port.
        name: how the proxy names itself in its log and its thread.
    """

    host = LOOPBACK

    def __init__(self, upstream_host: str, upstream_port: int, *, name: str = "proxy") -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.name = name
        self._mode = "pass"
        self._latency_s = 0.0
        self._port = 0
        self._began = time.monotonic()
        self._log: collections.deque[str] = collections.deque(maxlen=_LOG_LINES)
        # One condition guards the counters and the log, and wakes wait_for_connections().
        self._cond = threading.Condition()
        self._stats = dict.fromkeys(
            ("connections_total", "connections_open", "bytes_forwarded", "bytes_dropped",
             "resets"), 0)
        self._ids = itertools.count(1)
        self._links: set[_Link] = set()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._listening = False
        self._start_error: BaseException | None = None
        # Replaced by start(): each loop gets its own (set by stop(); set while not blackhole).
        self._stop_event = asyncio.Event()
        self._flowing = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Listen on a free port in a background loop; return once it accepts connections."""
        if self._thread is not None:
            raise HarnessError(f"Fault proxy '{self.name}' is already running on port "
                               f"{self._port}; stop it first or make a new FaultProxy.")
        self._began = time.monotonic()
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._on_loop_error)
        # Created here so stop() can set them whatever point the loop has reached;
        # since Python 3.10 an asyncio.Event binds to a loop only when first awaited.
        self._stop_event = asyncio.Event()
        self._flowing = asyncio.Event()
        if self._mode != "blackhole":
            self._flowing.set()
        self._ready.clear()
        self._start_error = None
        self._thread = threading.Thread(target=self._run, name=f"fault-proxy-{self.name}",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S) or self._start_error is not None:
            seen = (f"it failed: {self._start_error!r}" if self._start_error is not None
                    else "it was still not listening")
            self.stop()
            raise HarnessError(
                f"Fault proxy '{self.name}' did not start listening on {LOOPBACK} within "
                f"{START_TIMEOUT_S:.0f} s; {seen}. Its log:\n{self.log_tail()}\n"
                f"Check that 127.0.0.1 is up and the process may open sockets.")

    def stop(self) -> None:
        """Close the listener and both sides of every connection, end the loop and its thread.

        Connections get a plain close (FIN), not a RST. Calling it again does nothing.
        """
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._stop_event.set)
        except RuntimeError:  # the loop already closed: the thread has ended by itself
            pass
        thread.join(STOP_TIMEOUT_S)
        if thread.is_alive():
            raise HarnessError(
                f"Fault proxy '{self.name}' did not stop within {STOP_TIMEOUT_S:.0f} s. "
                f"Its log:\n{self.log_tail()}\nIts thread is a daemon and dies with this "
                f"process; report this as a harness bug.")
        self._thread = None
        self._listening = False

    def alive(self) -> bool:
        """True while the loop thread runs and the listener accepts connections."""
        return self._thread is not None and self._thread.is_alive() and self._listening

    @property
    def port(self) -> int:
        return self._port

    @property
    def mode(self) -> str:
        return self._mode

    # -- faults ---------------------------------------------------------------

    def set_mode(self, mode: str, *, latency_ms: int = 0) -> None:
        """Switch every open and every future connection to ``mode``; see the module doc.

        Raises:
            ValueError: ``mode`` is not one of :data:`MODES`, or ``latency`` without a
                positive ``latency_ms``.
        """
        if mode not in MODES:
            raise ValueError(f"Unknown fault proxy mode {mode!r}; the known modes are "
                             f"{', '.join(MODES)}.")
        if mode == "latency" and latency_ms <= 0:
            raise ValueError(f"Mode 'latency' needs latency_ms > 0, got {latency_ms}.")
        if not self.alive():  # not running: start() sets the loop up in this mode
            self._mode, self._latency_s = mode, latency_ms / 1000
            self._log_event(f"mode {mode} (not running)")
            return
        self._in_loop(lambda: self._apply_mode(mode, latency_ms / 1000))

    def heal(self) -> None:
        """End the fault: forward everything again."""
        self.set_mode("pass")

    # -- observing ------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """A consistent snapshot of the counters (``resets`` counts RSTs the proxy sent)."""
        with self._cond:
            return dict(self._stats)

    def wait_for_connections(self, n: int, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` until at least ``n`` connections are open."""
        with self._cond:
            return self._cond.wait_for(lambda: self._stats["connections_open"] >= n, timeout_s)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` events, each stamped with seconds since start()."""
        with self._cond:
            kept = list(self._log)[-lines:]
        return "\n".join(kept) if kept else f"(fault proxy '{self.name}' has logged nothing)"

    # -- inside the loop ------------------------------------------------------

    def _log_event(self, message: str) -> None:
        with self._cond:
            self._log.append(f"{time.monotonic() - self._began:9.3f}s {self.name}: {message}")

    def _count(self, **deltas: int) -> None:
        with self._cond:
            for key, delta in deltas.items():
                self._stats[key] += delta
            self._cond.notify_all()

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # Keep asyncio's complaints in the proxy's own log, where a timeout message shows them.
        self._log_event(f"loop error: {context.get('message')} {context.get('exception')!r}")

    def _in_loop(self, call: Callable[[], T]) -> T:
        """Run ``call`` in the loop thread and return its result, bounded."""
        if threading.current_thread() is self._thread:
            return call()
        loop = self._loop
        assert loop is not None
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                result = call()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                done.set_exception(exc)
                return
            # Answer only after the callbacks ``call`` scheduled have run: an aborted
            # transport closes its socket one loop step later, and a caller that just
            # asked for a reset must find the sockets already reset.
            loop.call_soon(done.set_result, result)

        loop.call_soon_threadsafe(run)
        try:
            return done.result(timeout=STOP_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            raise HarnessError(
                f"Fault proxy '{self.name}' did not apply a mode change within "
                f"{STOP_TIMEOUT_S:.0f} s; its loop is stuck. Its log:\n{self.log_tail()}"
            ) from None

    def _apply_mode(self, mode: str, latency_s: float) -> None:
        self._mode, self._latency_s = mode, latency_s
        self._log_event(f"mode {mode}" + (f" ({latency_s * 1000:.0f} ms)"
                                          if mode == "latency" else ""))
        if mode == "blackhole":
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode == "reset":
            for link in list(self._links):
                link.abort(rst=True)
                self._count(resets=1)
                self._log_event(f"#{link.ident} reset")

    def _run(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - kept for start() and the log
            self._start_error = self._start_error or exc
            self._log_event(f"loop ended with {exc!r}")
        finally:
            self._listening = False
            self._ready.set()
            self._loop.close()

    async def _main(self) -> None:
        try:
            server = await asyncio.start_server(self._on_client, LOOPBACK, 0)
        except OSError as exc:
            self._start_error = exc
            return
        self._port = server.sockets[0].getsockname()[1]
        self._listening = True
        self._log_event(f"listening on {LOOPBACK}:{self._port} -> "
                        f"{self.upstream_host}:{self.upstream_port}, mode {self._mode}")
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            self._listening = False
            server.close()
            links = list(self._links)
            for link in links:
                link.abort(rst=False)
            supervisors = [lk.supervisor for lk in links if lk.supervisor is not None]
            if supervisors:
                await asyncio.wait(supervisors, timeout=STOP_TIMEOUT_S / 2)
            await asyncio.wait_for(server.wait_closed(), STOP_TIMEOUT_S / 2)
            # One more step, so the socket closes that the aborts scheduled run before
            # the loop closes (a closed loop drops its pending callbacks).
            await asyncio.sleep(0)
            self._log_event(f"stopped with {len(links)} connection(s) closed")

    async def _on_client(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        ident = next(self._ids)
        if self._mode == "reset":
            _set_rst_on_close(writer)
            writer.transport.abort()
            self._count(connections_total=1, resets=1)
            self._log_event(f"#{ident} reset on accept")
            return
        link = _Link(ident, reader, writer)
        self._links.add(link)
        self._count(connections_total=1, connections_open=1)
        self._log_event(f"#{ident} opened from {writer.get_extra_info('peername')}")
        reason = "both sides finished"
        try:
            reason = await self._serve(link)
        except asyncio.CancelledError:
            reason = "aborted"
            raise
        except (OSError, asyncio.TimeoutError) as exc:
            # The upstream refused or reset: the client sees a reset too, as it would
            # without the proxy.
            reason = f"{type(exc).__name__}: {exc}; client reset"
            for side in link.writers():
                _set_rst_on_close(side)
            self._count(resets=1)
        finally:
            for task in link.pumps:
                task.cancel()
            for side in link.writers():
                side.transport.abort()
            self._links.discard(link)
            self._count(connections_open=-1)
            self._log_event(f"#{ident} closed ({reason})")

    async def _serve(self, link: _Link) -> str:
        to_upstream: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_QUEUE_CHUNKS)
        to_client: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_QUEUE_CHUNKS)
        read_client = asyncio.create_task(self._read(link.client_reader, to_upstream))
        link.pumps.append(read_client)
        if not self._flowing.is_set():
            self._log_event(f"#{link.ident} held: no upstream connection during blackhole")
            flowing = asyncio.create_task(self._flowing.wait())
            link.pumps.append(flowing)
            await asyncio.wait({read_client, flowing}, return_when=asyncio.FIRST_COMPLETED)
            if not flowing.done():
                read_client.result()  # raises the client's error, if it had one
                return "client left while held"
        up_reader, up_writer = await asyncio.wait_for(
            asyncio.open_connection(self.upstream_host, self.upstream_port), CONNECT_TIMEOUT_S)
        link.upstream_writer = up_writer
        link.pumps += [
            asyncio.create_task(self._write(to_upstream, up_writer)),
            asyncio.create_task(self._read(up_reader, to_client)),
            asyncio.create_task(self._write(to_client, link.client_writer)),
        ]
        done, _ = await asyncio.wait(link.pumps, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
        return "both sides finished"

    async def _read(self, reader: asyncio.StreamReader,
                    queue: asyncio.Queue[tuple[float, bytes] | None]) -> None:
        """Read one side; drop what arrives during a blackhole, stamp the rest with its due time."""
        while True:
            data = await reader.read(_CHUNK)
            if not data:
                await queue.put(_EOF)
                return
            if not self._flowing.is_set():
                self._count(bytes_dropped=len(data))
                continue
            delay = self._latency_s if self._mode == "latency" else 0.0
            await queue.put((time.monotonic() + delay, data))

    async def _write(self, queue: asyncio.Queue[tuple[float, bytes] | None],
                     writer: asyncio.StreamWriter) -> None:
        """Write to the other side in order, each chunk no earlier than its due time."""
        while True:
            item = await queue.get()
            if item is _EOF:
                await self._flowing.wait()  # a stalled path delivers no FIN either
                if writer.can_write_eof():
                    writer.write_eof()
                return
            due, data = item
            wait_s = due - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            if not self._flowing.is_set():  # a blackhole began while the chunk was queued
                self._count(bytes_dropped=len(data))
                continue
            writer.write(data)
            self._count(bytes_forwarded=len(data))
            await writer.drain()
