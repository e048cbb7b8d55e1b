"""The console tunnel: browser websocket <-> the desktop's VNC server.

The broker authenticates to the VNC server itself (a per-connection password set through
libvirt a moment before) and offers the browser only "no authentication", so the
browser never sees a VNC password. Every byte from the browser goes through the RFB
parser, which bounds message sizes and tells which messages are real user input; for
the helpdesk's read-only view it forwards only display requests (broker.rfb.filters).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, cast

from broker.rfb import (
    BrowserHandshake,
    ClientFilter,
    RfbProtocolError,
    ServerHandshake,
)

log = logging.getLogger(__name__)
READ_CHUNK = 256 * 1024
CONNECT_TIMEOUT_S = 5.0
HANDSHAKE_TIMEOUT_S = 10.0
INPUT_REPORT_INTERVAL_S = 1.0


class TunnelError(Exception):
    """The tunnel could not be set up; the message is safe to show the user."""


class BrowserRefused(TunnelError):
    """The browser broke the RFB handshake (wrong choice, garbage, left, too slow):
    its fault or its leaving, not the broker's."""


@dataclass(frozen=True)
class ConsoleTarget:
    host: str
    port: int
    password: str


class BrowserSocket(Protocol):
    """What the tunnel needs of a websocket (Starlette's fits via `StarletteSocket`)."""

    async def recv(self) -> bytes | None:
        """Next binary message, or None when the browser has gone."""
        ...

    async def send(self, data: bytes) -> None: ...


class DesktopStream(asyncio.Protocol):
    """The broker's TCP connection to a VNC server, shaped for relaying.

    asyncio's StreamReader copies every byte it receives twice (into its buffer, then out
    of it). This protocol hands the event loop's own `bytes` objects to the relay, so a
    FramebufferUpdate crosses the broker with no copy of ours: small chunks that queue up
    are joined (one websocket message instead of many), big ones pass as they came.

    Back-pressure both ways: reading from the VNC server pauses while more than
    `high_water` bytes wait for the browser, and `drain()` waits while the transport's
    write buffer is over its high-water mark. Not thread-safe; one reader, one writer.
    """

    def __init__(self, high_water: int = 512 * 1024, low_water: int = 128 * 1024) -> None:
        self._high_water = high_water
        self._low_water = low_water
        self._transport: asyncio.Transport | None = None
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._eof = False
        self._lost: Exception | None = None
        self._reading_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a TCP transport

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._queued += len(data)
        if self._queued > self._high_water and not self._reading_paused:
            assert self._transport is not None
            self._transport.pause_reading()
            self._reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close the transport: the VNC server is done

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = exc
        self._writable.set()  # a paused writer must not wait forever
        self._wake()
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- the relay's side -------------------------------------------------------------------

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self, limit: int = READ_CHUNK) -> bytes:
        """The next bytes from the VNC server (queued chunks joined up to `limit` bytes, a
        bigger single chunk whole); b"" once it closed. Raises ConnectionError if the
        connection broke with an error."""
        while not self._chunks:
            if self._eof:
                if self._lost is not None:
                    raise ConnectionResetError(str(self._lost)) from self._lost
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft()
        if self._chunks and len(data) + len(self._chunks[0]) <= limit:
            parts = [data]
            size = len(data)
            while self._chunks and size + len(self._chunks[0]) <= limit:
                size += len(self._chunks[0])
                parts.append(self._chunks.popleft())
            data = b"".join(parts)
        self._queued -= len(data)
        if self._reading_paused and self._queued <= self._low_water and self._transport:
            self._transport.resume_reading()
            self._reading_paused = False
        return data

    def write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise ConnectionResetError("desktop console connection closed")
        self._transport.write(data)

    async def drain(self) -> None:
        """Wait while the write buffer is full. Raises ConnectionError once closed."""
        await self._writable.wait()
        if self._transport is None or self._transport.is_closing():
            raise ConnectionResetError("desktop console connection closed")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self) -> None:
        await self._closed


async def open_console(target: ConsoleTarget) -> tuple[DesktopStream, bytes]:
    """Connect and authenticate to the VNC server. Returns the connection and any bytes
    the server sent past its security phase. Raises TunnelError."""
    loop = asyncio.get_running_loop()
    try:
        _, desktop = await asyncio.wait_for(
            loop.create_connection(DesktopStream, target.host, target.port),
            CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as e:
        raise TunnelError(f"desktop console not reachable: {e.__class__.__name__}") from e
    hs = ServerHandshake(target.password, allow_none=False)
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            while not hs.done:
                data = await desktop.read(4096)
                if not data:
                    raise TunnelError("desktop console closed during authentication")
                reply = hs.receive(data)
                if reply:
                    desktop.write(reply)
                    await desktop.drain()
    except (RfbProtocolError, TimeoutError, OSError) as e:
        desktop.close()
        raise TunnelError(f"desktop console authentication failed: {e}") from e
    except BaseException:
        desktop.close()
        raise
    return desktop, hs.leftover()


async def greet_browser(ws: BrowserSocket) -> bytes:
    """Run the RFB security phase with the browser; returns its bytes after it."""
    hs = BrowserHandshake()
    await ws.send(hs.start())
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            while not hs.done:
                data = await ws.recv()
                if data is None:
                    raise BrowserRefused("browser left during the handshake")
                reply = hs.receive(data)
                if reply:
                    await ws.send(reply)
    except RfbProtocolError as e:
        raise BrowserRefused(f"browser handshake refused: {e}") from e
    except TimeoutError as e:
        raise BrowserRefused("browser handshake timed out") from e
    return hs.leftover()


async def relay(ws: BrowserSocket, desktop: DesktopStream, *, first_from_browser: bytes,
                first_from_server: bytes, on_input: Callable[[], None],
                max_cut_text: int, read_only: bool = False) -> str:
    """Relay both ways until one side ends. Returns why it ended.

    `on_input()` is called for the first keyboard or mouse input, then at most once per
    INPUT_REPORT_INTERVAL_S while input goes on: idle policies count minutes, and a mouse
    drag sends a hundred PointerEvents a second. `read_only`: only the browser's display
    requests reach the desktop (no input at all, so `on_input` is never called)."""
    client = ClientFilter(read_only=read_only, max_cut_text=max_cut_text)
    loop = asyncio.get_running_loop()
    next_input_report = 0.0

    def forward_browser_bytes(data: bytes) -> None:
        nonlocal next_input_report
        forward, has_input = client.feed(data)  # raises RfbProtocolError on hostile input
        if has_input:
            now = loop.time()
            if now >= next_input_report:
                on_input()
                next_input_report = now + INPUT_REPORT_INTERVAL_S
        if forward:
            desktop.write(forward)

    async def browser_to_server() -> str:
        if first_from_browser:
            forward_browser_bytes(first_from_browser)
        while True:
            data = await ws.recv()
            if data is None:
                return "browser closed"
            forward_browser_bytes(data)
            await desktop.drain()

    async def server_to_browser() -> str:
        if first_from_server:
            await ws.send(first_from_server)
        while True:
            data = await desktop.read()
            if not data:
                return "desktop closed"
            await ws.send(data)

    tasks = [asyncio.create_task(browser_to_server()), asyncio.create_task(server_to_browser())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        reason = "closed"
        for t in done:
            exc = t.exception()
            if isinstance(exc, RfbProtocolError):
                reason = f"protocol error from browser: {exc}"
            elif exc is not None:
                reason = f"{exc.__class__.__name__}"
            else:
                reason = t.result()
        return reason
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        desktop.close()
        with contextlib.suppress(Exception):
            await desktop.wait_closed()


async def run_tunnel(ws: BrowserSocket, connect: Callable[[], Awaitable[ConsoleTarget]], *,
                     on_input: Callable[[], None], max_cut_text: int = 1 << 20,
                     setup_lock: asyncio.Lock | None = None, read_only: bool = False) -> str:
    """Prepare the console (connect() sets the password and says where), authenticate,
    greet the browser, relay (`read_only`: display requests only). Raises TunnelError
    before relaying; returns why it ended.

    `setup_lock` (one per desktop) is held from connect() until the VNC server accepted
    the password: the desktop has one VNC password, and another tunnel's connect()
    replacing it before this one logged in would make this login fail."""
    async with setup_lock if setup_lock is not None else contextlib.nullcontext():
        target = await connect()
        desktop, from_server = await open_console(target)
    try:
        from_browser = await greet_browser(ws)
    except BaseException:
        desktop.close()
        raise
    return await relay(ws, desktop, first_from_browser=from_browser,
                       first_from_server=from_server, on_input=on_input,
                       max_cut_text=max_cut_text, read_only=read_only)
