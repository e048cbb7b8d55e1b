"""The load generator of the tunnel benchmark: one client, the same for every proxy.

Websocket proxies (the broker, websockify) are driven with the `websockets` package
exactly alike (subprotocol "binary", no compression, no pings, no size limit); the raw
relay and the direct connection get a plain TCP stream. For the broker the client also
does what noVNC does: fetch a console token through the API (`BrokerTokens`), then the
browser side of RFB 3.8 (security None, ClientInit). Every measurement is a coroutine
that returns plain numbers; `Window` hooks let the caller read the proxy's /proc
figures exactly at the start and end of a measured window.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin, Subprotocol

from bench.tunnel_wire import (
    ACK_LENGTH,
    SYNC_MESSAGE,
    Mode,
    control_message,
    key_event,
    parse_ack,
)

READ_CHUNK = 256 * 1024
OPEN_TIMEOUT_S = 60.0
OPEN_CONCURRENCY = 16
CLOSE_TIMEOUT_S = 0.25  # a streaming proxy may not answer a close in time: then abort


class Link(Protocol):
    async def send(self, data: bytes) -> None: ...

    async def recv(self) -> bytes:
        """Next bytes; raises EOFError when the proxy closed."""
        ...

    async def close(self) -> None: ...


class WsLink:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, data: bytes) -> None:
        await self.ws.send(data)

    async def recv(self) -> bytes:
        try:
            data = await self.ws.recv(decode=False)
        except ConnectionClosed as e:
            raise EOFError(str(e)) from e
        assert isinstance(data, bytes)
        return data

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()


class TcpLink:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self) -> bytes:
        data = await self.reader.read(READ_CHUNK)
        if not data:
            raise EOFError("closed")
        return data

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class ExactReader:
    """Exact-length reads over a link whose messages may split or join RFB messages."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.buf = bytearray()

    async def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += await self.link.recv()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


class BrokerTokens:
    """Signs in once (real LDAP behind the broker) and fetches one console path per tunnel."""

    def __init__(self, base_url: str, username: str, password: str, pool_id: str) -> None:
        self.base_url = base_url
        self._username = username
        self._password = password
        self._pool_id = pool_id
        self._client = httpx.AsyncClient(base_url=base_url, headers={"Origin": base_url},
                                         timeout=30.0)
        self._csrf = ""
        self.cookie = ""

    async def login(self) -> None:
        r = await self._client.post("/api/session", json={"username": self._username,
                                                           "password": self._password})
        r.raise_for_status()
        self._csrf = r.json()["csrf"]
        self.cookie = "; ".join(f"{k}={v}" for k, v in self._client.cookies.items())

    async def console_path(self) -> str:
        """A fresh one-time console path; waits while the pool prepares its desktop."""
        deadline = time.monotonic() + 30.0
        while True:
            r = await self._client.post(f"/api/pools/{self._pool_id}/connect",
                                        headers={"X-CSRF-Token": self._csrf})
            if r.status_code == 200:
                path: str = r.json()["console"]
                return path
            if r.status_code != 503 or time.monotonic() > deadline:
                raise RuntimeError(f"connect failed: {r.status_code} {r.text}")
            await asyncio.sleep(0.2)

    async def aclose(self) -> None:
        await self._client.aclose()


@dataclass
class Target:
    """One way to reach the fake desktop: through a proxy or directly."""

    name: str
    port: int
    websocket: bool
    rfb: bool = False  # the broker: RFB handshake with security None first
    tokens: BrokerTokens | None = None
    pid: int | None = None  # the proxy's process, for its /proc figures

    async def open(self, mode: Mode, rate: int = 0, frame_bytes: int = 0) -> Link:
        link: Link
        if self.websocket:
            path = await self.tokens.console_path() if self.tokens else "/"
            origin = f"http://127.0.0.1:{self.port}"
            headers = {"Cookie": self.tokens.cookie} if self.tokens else {}
            ws = await connect(f"ws://127.0.0.1:{self.port}{path}", origin=Origin(origin),
                               additional_headers=headers, subprotocols=[Subprotocol("binary")],
                               compression=None, max_size=None, ping_interval=None,
                               open_timeout=OPEN_TIMEOUT_S, close_timeout=CLOSE_TIMEOUT_S)
            link = WsLink(ws)
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port,
                                                           limit=READ_CHUNK)
            link = TcpLink(reader, writer)
        if self.rfb:
            await rfb_handshake(link)
        await link.send(control_message(mode, rate, frame_bytes))
        return link

    async def open_many(self, n: int, mode: Mode, rate: int = 0,
                        frame_bytes: int = 0) -> list[Link]:
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)

        async def one() -> Link:
            async with gate:
                return await self.open(mode, rate, frame_bytes)

        results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
        links = [r for r in results if not isinstance(r, BaseException)]
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await close_all(links)
            raise RuntimeError(f"{self.name}: {len(errors)} of {n} tunnels failed to open: "
                               f"{errors[0]!r}")
        return links


async def rfb_handshake(link: Link) -> None:
    """noVNC's side of RFB 3.8 with a server offering only security None."""
    r = ExactReader(link)
    if await r.read(12) != b"RFB 003.008\n":
        raise RuntimeError("not an RFB 3.8 server")
    await link.send(b"RFB 003.008\n")
    count = (await r.read(1))[0]
    if list(await r.read(count)) != [1]:
        raise RuntimeError("the proxy offered more than security None")
    await link.send(b"\x01")
    if await r.read(4) != b"\x00\x00\x00\x00":
        raise RuntimeError("security None was refused")
    await link.send(b"\x01")  # ClientInit, shared
    header = await r.read(24)
    await r.read(int.from_bytes(header[20:24], "big"))  # desktop name
    if r.buf:
        raise RuntimeError("unexpected bytes after ServerInit")


async def close_all(links: list[Link]) -> None:
    await asyncio.gather(*(link.close() for link in links), return_exceptions=True)


@dataclass
class Window:
    """Hooks called at the start and end of a measured window (e.g. /proc readings)."""

    begin: Callable[[], None] = lambda: None
    end: Callable[[], None] = lambda: None
    seconds: float = 0.0


async def _drain(link: Link, counts: list[int], i: int) -> None:
    with contextlib.suppress(EOFError, ConnectionError):
        while True:
            counts[i] += len(await link.recv())


async def downstream(target: Target, streams: int, seconds: float, warmup_s: float,
                     window: Window | None = None, *, rate: int = 0,
                     frame_bytes: int = 0) -> tuple[int, float]:
    """Server->browser: bytes received by all streams in the window, and its length."""
    window = window or Window()
    links = await target.open_many(streams, Mode.STREAM, rate, frame_bytes)
    counts = [0] * streams
    readers = [asyncio.create_task(_drain(link, counts, i)) for i, link in enumerate(links)]
    try:
        await asyncio.sleep(warmup_s)
        before, t0 = sum(counts), time.perf_counter()
        window.begin()
        await asyncio.sleep(seconds)
        after, t1 = sum(counts), time.perf_counter()
        window.end()
        if any(r.done() for r in readers):
            raise RuntimeError(f"{target.name}: a stream ended early")
        window.seconds = t1 - t0
        return after - before, t1 - t0
    finally:
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await close_all(links)


async def _send_batches(link: Link, reader: ExactReader, chunks: list[bytes], until: float,
                        in_flight: int) -> int:
    """Send the chunk list, each time followed by the sync message, until the deadline;
    never more than `in_flight` lists unacknowledged (so a slow proxy is not left with
    megabytes to drain after the deadline). Returns the desktop's count of bytes consumed
    on this link once every list was acknowledged. The list ends at an RFB message
    boundary, so the sync message is always a message of its own."""
    outstanding = 0
    count = 0
    while time.perf_counter() < until:
        if outstanding == in_flight:
            count = parse_ack(await reader.read(ACK_LENGTH))
            outstanding -= 1
        for chunk in chunks:
            await link.send(chunk)
        await link.send(SYNC_MESSAGE)
        outstanding += 1
    for _ in range(outstanding):
        count = parse_ack(await reader.read(ACK_LENGTH))
    return count


async def upstream(target: Target, streams: int, seconds: float, chunks: list[bytes],
                   window: Window | None = None, warmup_s: float = 0.2,
                   in_flight: int = 8) -> tuple[int, float]:
    """Browser->server: bytes the desktop consumed from all streams in the window, and
    the window's length, from the start of sending to the last acknowledgement."""
    window = window or Window()
    links = await target.open_many(streams, Mode.SINK)
    readers = [ExactReader(link) for link in links]
    for reader in readers:  # the desktop is ready to count
        if parse_ack(await reader.read(ACK_LENGTH)) != 0:
            raise RuntimeError(f"{target.name}: the desktop did not start counting at 0")
    batch = sum(map(len, chunks)) + len(SYNC_MESSAGE)

    async def phase(until: float) -> list[int]:
        return await asyncio.gather(*(
            _send_batches(link, reader, chunks, until, in_flight)
            for link, reader in zip(links, readers, strict=True)))

    try:
        before = await phase(time.perf_counter() + warmup_s)
        window.begin()
        t0 = time.perf_counter()
        after = await phase(t0 + seconds)
        t1 = time.perf_counter()
        window.end()
        window.seconds = t1 - t0
        for count in after:
            if count % batch:
                raise RuntimeError(f"{target.name}: the desktop consumed {count} bytes, not "
                                   f"a whole number of {batch}-byte batches")
        return sum(after) - sum(before), t1 - t0
    finally:
        await close_all(links)


async def round_trips(target: Target, samples: int, warmup: int = 50,
                      window: Window | None = None, settle_s: float = 0.0) -> list[float]:
    """Seconds per round trip of an 8-byte KeyEvent echoed by the fake desktop; the
    window covers the measured round trips (not the warm-up, not the closing). With
    `settle_s`, waits that long after opening: a broker's connect wakes its pool worker,
    whose database work would otherwise land in the first samples."""
    window = window or Window()
    link = await target.open(Mode.ECHO)
    await asyncio.sleep(settle_s)
    reader = ExactReader(link)
    message = key_event(0x61)
    out: list[float] = []
    try:
        for i in range(warmup + samples):
            if i == warmup:
                window.begin()
            t = time.perf_counter()
            await link.send(message)
            await reader.read(len(message))
            if i >= warmup:
                out.append(time.perf_counter() - t)
        window.end()
        window.seconds = sum(out)
        return out
    finally:
        await link.close()


async def hold_idle(target: Target, n: int, measure: Callable[[], Awaitable[None]]) -> None:
    """Open n idle tunnels, call `measure()` while they are open, close them."""
    links = await target.open_many(n, Mode.IDLE)
    try:
        await measure()
    finally:
        await close_all(links)
