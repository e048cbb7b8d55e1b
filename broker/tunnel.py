"""The console tunnel: browser websocket <-> the desktop's VNC server.

The broker authenticates to the VNC server itself (a per-connection password set through
libvirt a moment before) and offers the browser only "no authentication", so the
browser never sees a VNC password. Every byte from the browser goes through the RFB
parser, which bounds message sizes and tells which messages are real user input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from broker.rfb import (
    BrowserHandshake,
    ClientStreamParser,
    RfbProtocolError,
    ServerHandshake,
)

log = logging.getLogger(__name__)
READ_CHUNK = 256 * 1024
CONNECT_TIMEOUT_S = 5.0
HANDSHAKE_TIMEOUT_S = 10.0


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


async def open_console(target: ConsoleTarget) -> tuple[asyncio.StreamReader,
                                                       asyncio.StreamWriter, bytes]:
    """Connect and authenticate to the VNC server. Returns the streams and any bytes the
    server sent past its security phase. Raises TunnelError."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port), CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as e:
        raise TunnelError(f"desktop console not reachable: {e.__class__.__name__}") from e
    hs = ServerHandshake(target.password, allow_none=False)
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            while not hs.done:
                data = await reader.read(4096)
                if not data:
                    raise TunnelError("desktop console closed during authentication")
                reply = hs.receive(data)
                if reply:
                    writer.write(reply)
                    await writer.drain()
    except (RfbProtocolError, TimeoutError, OSError) as e:
        writer.close()
        raise TunnelError(f"desktop console authentication failed: {e}") from e
    except BaseException:
        writer.close()
        raise
    return reader, writer, hs.leftover()


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


async def relay(ws: BrowserSocket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                *, first_from_browser: bytes, first_from_server: bytes,
                on_input: Callable[[], None], max_cut_text: int) -> str:
    """Relay both ways until one side ends. Returns why it ended."""
    parser = ClientStreamParser(max_cut_text=max_cut_text, skip_client_init=True)

    def forward_browser_bytes(data: bytes) -> None:
        messages = parser.feed(data)  # raises RfbProtocolError on hostile input
        if any(m.input is not None for m in messages):
            on_input()
        writer.write(data)

    async def browser_to_server() -> str:
        if first_from_browser:
            forward_browser_bytes(first_from_browser)
        while True:
            data = await ws.recv()
            if data is None:
                return "browser closed"
            forward_browser_bytes(data)
            await writer.drain()

    async def server_to_browser() -> str:
        if first_from_server:
            await ws.send(first_from_server)
        while True:
            data = await reader.read(READ_CHUNK)
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
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def run_tunnel(ws: BrowserSocket, connect: Callable[[], Awaitable[ConsoleTarget]], *,
                     on_input: Callable[[], None], max_cut_text: int = 1 << 20,
                     setup_lock: asyncio.Lock | None = None) -> str:
    """Prepare the console (connect() sets the password and says where), authenticate,
    greet the browser, relay. Raises TunnelError before relaying; returns why it ended.

    `setup_lock` (one per desktop) is held from connect() until the VNC server accepted
    the password: the desktop has one VNC password, and another tunnel's connect()
    replacing it before this one logged in would make this login fail."""
    async with setup_lock if setup_lock is not None else contextlib.nullcontext():
        target = await connect()
        reader, writer, from_server = await open_console(target)
    try:
        from_browser = await greet_browser(ws)
    except BaseException:
        writer.close()
        raise
    return await relay(ws, reader, writer, first_from_browser=from_browser,
                       first_from_server=from_server, on_input=on_input,
                       max_cut_text=max_cut_text)
