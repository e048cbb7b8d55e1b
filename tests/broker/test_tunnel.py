"""Tests for the console tunnel's I/O shell (broker.tunnel) over real loopback sockets.

A small RFB 3.8 VNC server (VNC authentication, then echo or scripted behaviour) stands
for QEMU; a queue-backed BrowserSocket stands for the browser's websocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from broker.rfb import vnc_auth_response
from broker.tunnel import (
    INPUT_REPORT_INTERVAL_S,
    ConsoleTarget,
    DesktopStream,
    TunnelError,
    open_console,
    relay,
    run_tunnel,
)

PASSWORD = "pw123456"
SERVER_INIT = struct.pack(">HH", 640, 480) + bytes(16) + struct.pack(">I", 4) + b"test"
KEY_DOWN = struct.pack(">BBxxI", 4, 1, 0x61)
UPDATE_REQUEST = struct.pack(">BBHHHH", 3, 1, 0, 0, 640, 480)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class FakeVnc:
    """A loopback VNC server: VNC auth with PASSWORD, ClientInit/ServerInit, then `after`."""

    after: Handler
    port: int = 0
    failures: list[str] = field(default_factory=list)
    client_inits: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"RFB 003.008\n")
            assert await reader.readexactly(12) == b"RFB 003.008\n"
            writer.write(bytes([1, 2]))
            assert await reader.readexactly(1) == b"\x02"
            challenge = os.urandom(16)
            writer.write(challenge)
            if await reader.readexactly(16) != vnc_auth_response(PASSWORD, challenge):
                writer.write(struct.pack(">II", 1, 5) + b"wrong")
                await writer.drain()
                return
            writer.write(struct.pack(">I", 0))
            self.client_inits.append(await reader.readexactly(1))  # ClientInit
            writer.write(SERVER_INIT)
            await self.after(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except AssertionError as e:
            self.failures.append(repr(e))
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def vnc_server(after: Handler) -> AsyncIterator[FakeVnc]:
    vnc = FakeVnc(after)
    server = await asyncio.start_server(vnc.handle, "127.0.0.1", 0)
    vnc.port = server.sockets[0].getsockname()[1]
    async with server:
        yield vnc
    assert not vnc.failures, vnc.failures


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


class QueueSocket:
    """The browser: `inbox` feeds recv() (None = the browser left), sends go to `sent`."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.sent: list[bytes] = []
        self.got_bytes = asyncio.Event()

    async def recv(self) -> bytes | None:
        return await self.inbox.get()

    async def send(self, data: bytes) -> None:
        self.sent.append(data)
        self.got_bytes.set()

    async def received(self, n: int, timeout_s: float = 5.0) -> bytes:
        """Wait until the browser got at least n bytes in all; return them."""
        async with asyncio.timeout(timeout_s):
            while sum(map(len, self.sent)) < n:
                self.got_bytes.clear()
                await self.got_bytes.wait()
        return b"".join(self.sent)


# -- DesktopStream, driven directly -----------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.reading = True
        self.closing = False
        self.written: list[bytes] = []

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closing = True


def stream_with_fake_transport(**kwargs: int) -> tuple[DesktopStream, FakeTransport]:
    stream = DesktopStream(**kwargs)
    transport = FakeTransport()
    stream.connection_made(transport)  # type: ignore[arg-type]
    return stream, transport


async def test_a_big_chunk_is_handed_over_as_it_came() -> None:
    stream, _ = stream_with_fake_transport()
    chunk = os.urandom(200_000)
    stream.data_received(chunk)
    assert await stream.read() is chunk  # no copy of ours


async def test_small_queued_chunks_are_joined_up_to_the_limit() -> None:
    stream, _ = stream_with_fake_transport()
    for i in range(5):
        stream.data_received(bytes([i]) * 100)
    assert await stream.read(limit=250) == bytes([0]) * 100 + bytes([1]) * 100
    assert await stream.read(limit=1000) == b"".join(bytes([i]) * 100 for i in (2, 3, 4))


async def test_reading_pauses_over_the_high_water_mark_and_resumes_below_the_low() -> None:
    stream, transport = stream_with_fake_transport(high_water=1000, low_water=300)
    for _ in range(3):
        stream.data_received(b"x" * 400)
    assert not transport.reading  # 1200 queued > 1000
    await stream.read(limit=400)
    assert not transport.reading  # 800 queued, still over the low-water mark
    await stream.read(limit=400)
    assert not transport.reading  # 400 queued
    await stream.read(limit=400)
    assert transport.reading


async def test_read_waits_for_data_and_ends_with_empty_bytes_at_eof() -> None:
    stream, _ = stream_with_fake_transport()
    pending = asyncio.create_task(stream.read())
    await asyncio.sleep(0)
    assert not pending.done()
    stream.data_received(b"abc")
    assert await pending == b"abc"
    stream.eof_received()
    assert await stream.read() == b""


async def test_a_broken_connection_raises_after_the_queued_bytes() -> None:
    stream, _ = stream_with_fake_transport()
    stream.data_received(b"last words")
    stream.connection_lost(ConnectionResetError("reset by peer"))
    assert await stream.read() == b"last words"
    with pytest.raises(ConnectionError):
        await stream.read()


async def test_drain_waits_while_the_transport_is_paused() -> None:
    stream, transport = stream_with_fake_transport()
    stream.pause_writing()
    drained = asyncio.create_task(stream.drain())
    await asyncio.sleep(0)
    assert not drained.done()
    stream.resume_writing()
    await drained
    transport.closing = True
    with pytest.raises(ConnectionError):
        stream.write(b"x")


async def test_a_writer_blocked_on_a_lost_connection_is_released() -> None:
    stream, transport = stream_with_fake_transport()
    stream.pause_writing()
    drained = asyncio.create_task(stream.drain())
    await asyncio.sleep(0)
    transport.closing = True
    stream.connection_lost(None)
    with pytest.raises(ConnectionError):
        await drained


# -- over real sockets ------------------------------------------------------------------------


async def test_open_console_authenticates_and_returns_the_bytes_after_it() -> None:
    async def send_server_init_only(reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with vnc_server(send_server_init_only) as vnc:
        desktop, leftover = await open_console(ConsoleTarget("127.0.0.1", vnc.port, PASSWORD))
        try:
            desktop.write(b"\x01")  # ClientInit
            got = leftover
            while len(got) < len(SERVER_INIT):
                got += await desktop.read()
            assert got == SERVER_INIT
        finally:
            desktop.close()
            await desktop.wait_closed()


async def test_a_wrong_password_is_a_tunnel_error() -> None:
    async with vnc_server(echo) as vnc:
        with pytest.raises(TunnelError, match="authentication failed"):
            await open_console(ConsoleTarget("127.0.0.1", vnc.port, "wrong"))


async def test_relay_carries_both_ways_and_reports_input() -> None:
    inputs: list[int] = []
    browser = QueueSocket()
    async with vnc_server(echo) as vnc:
        desktop, leftover = await open_console(ConsoleTarget("127.0.0.1", vnc.port, PASSWORD))
        task = asyncio.create_task(relay(
            browser, desktop, first_from_browser=b"\x01", first_from_server=leftover,
            on_input=lambda: inputs.append(1), max_cut_text=4 << 20))
        assert (await browser.received(len(SERVER_INIT)))[:len(SERVER_INIT)] == SERVER_INIT
        big = struct.pack(">B3xI", 6, 3_000_000 - 8) + b"c" * (3_000_000 - 8)  # 3 MB paste
        for message in (UPDATE_REQUEST, big[:1_000_000], big[1_000_000:], KEY_DOWN):
            await browser.inbox.put(message)
        echoed = await browser.received(len(SERVER_INIT) + 10 + 3_000_000 + 8)
        assert echoed[len(SERVER_INIT):] == UPDATE_REQUEST + big + KEY_DOWN
        assert inputs  # the KeyEvent counted as input
        await browser.inbox.put(None)
        assert await task == "browser closed"


async def test_relay_ends_when_the_desktop_closes() -> None:
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return

    browser = QueueSocket()
    async with vnc_server(close_at_once) as vnc:
        desktop, leftover = await open_console(ConsoleTarget("127.0.0.1", vnc.port, PASSWORD))
        reason = await relay(browser, desktop, first_from_browser=b"\x01",
                             first_from_server=leftover, on_input=lambda: None,
                             max_cut_text=1024)
    assert reason == "desktop closed"


async def test_garbage_from_the_browser_ends_the_relay_as_a_protocol_error() -> None:
    browser = QueueSocket()
    async with vnc_server(echo) as vnc:
        async def connect() -> ConsoleTarget:
            return ConsoleTarget("127.0.0.1", vnc.port, PASSWORD)

        task = asyncio.create_task(run_tunnel(browser, connect, on_input=lambda: None))
        assert await browser.received(12) == b"RFB 003.008\n"
        for message in (b"RFB 003.008\n", b"\x01", b"\x01", bytes([77]) + b"garbage"):
            await browser.inbox.put(message)
        reason = await asyncio.wait_for(task, 5)
    assert reason.startswith("protocol error from browser: unknown client message type 77")


async def test_input_is_reported_at_once_then_at_most_once_per_interval() -> None:
    reports: list[float] = []
    loop = asyncio.get_running_loop()
    browser = QueueSocket()
    async with vnc_server(echo) as vnc:
        desktop, leftover = await open_console(ConsoleTarget("127.0.0.1", vnc.port, PASSWORD))
        task = asyncio.create_task(relay(
            browser, desktop, first_from_browser=b"\x01", first_from_server=leftover,
            on_input=lambda: reports.append(loop.time()), max_cut_text=1024))
        await browser.inbox.put(UPDATE_REQUEST)  # not input
        await browser.received(len(SERVER_INIT) + len(UPDATE_REQUEST))
        assert reports == []
        for _ in range(50):  # a burst of typing: reported once, at its start
            await browser.inbox.put(KEY_DOWN)
        await browser.received(len(SERVER_INIT) + len(UPDATE_REQUEST) + 50 * len(KEY_DOWN))
        assert len(reports) == 1
        await asyncio.sleep(INPUT_REPORT_INTERVAL_S)
        await browser.inbox.put(KEY_DOWN)  # typing goes on: reported again
        await browser.received(len(SERVER_INIT) + len(UPDATE_REQUEST) + 51 * len(KEY_DOWN))
        assert len(reports) == 2
        assert reports[1] - reports[0] >= INPUT_REPORT_INTERVAL_S
        await browser.inbox.put(None)
        assert await task == "browser closed"


@pytest.mark.parametrize("read_only", [False, True])
async def test_clientinit_always_asks_for_a_shared_desktop(read_only: bool) -> None:
    browser = QueueSocket()
    async with vnc_server(echo) as vnc:
        async def connect() -> ConsoleTarget:
            return ConsoleTarget("127.0.0.1", vnc.port, PASSWORD)

        task = asyncio.create_task(run_tunnel(browser, connect, on_input=lambda: None,
                                              read_only=read_only))
        assert await browser.received(12) == b"RFB 003.008\n"
        for message in (b"RFB 003.008\n", b"\x01", b"\x00"):  # exclusive, please
            await browser.inbox.put(message)
        await browser.received(12 + 2 + 4 + len(SERVER_INIT))
        await browser.inbox.put(None)
        assert await asyncio.wait_for(task, 5) == "browser closed"
    assert vnc.client_inits == [b"\x01"]


async def test_a_read_only_relay_forwards_display_requests_and_drops_input() -> None:
    inputs: list[int] = []
    browser = QueueSocket()
    async with vnc_server(echo) as vnc:
        desktop, leftover = await open_console(ConsoleTarget("127.0.0.1", vnc.port, PASSWORD))
        task = asyncio.create_task(relay(
            browser, desktop, first_from_browser=b"\x01", first_from_server=leftover,
            on_input=lambda: inputs.append(1), max_cut_text=1 << 20, read_only=True))
        paste = struct.pack(">B3xI", 6, 5) + b"hello"
        pointer = struct.pack(">BBHH", 5, 1, 10, 10)
        for message in (KEY_DOWN, pointer + UPDATE_REQUEST, paste[:3], paste[3:],
                        UPDATE_REQUEST):
            await browser.inbox.put(message)
        echoed = await browser.received(len(SERVER_INIT) + 2 * len(UPDATE_REQUEST))
        await asyncio.sleep(0.2)  # anything else would have been echoed by now
        assert b"".join(browser.sent)[len(SERVER_INIT):] == UPDATE_REQUEST * 2, echoed
        assert inputs == []  # nothing reached the desktop: no input to report
        await browser.inbox.put(bytes([4, 1, 0]))  # a KeyEvent cut short, then garbage
        await browser.inbox.put(bytes([0, 0, 0, 0x61, 77]))
        await browser.inbox.put(bytes([77]))
        reason = await asyncio.wait_for(task, 5)
    assert reason.startswith("protocol error from browser: unknown client message type 77")
