"""The raw TCP relay of the tunnel benchmark: the physical limit of relaying in Python.

A byte relay with no framing, no parsing and no copies of its own: asyncio protocols on
uvloop, each side's `data_received` writes straight into the other side's transport,
and a full write buffer pauses reading on the other side (back-pressure both ways).
Anything a websocket proxy does on top of this costs throughput; this is what a proxy
written in Python on this machine could reach if framing were free.

Run as `python -m bench.tunnel_relay --port P --target-port Q`; prints "ready".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import cast

import uvloop


class _Side(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.early: list[bytes] = []  # arrived before the other side was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.peer is None or self.peer.transport is None:
            self.early.append(data)
            return
        self.peer.transport.write(data)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class _Browser(_Side):
    def __init__(self, target_port: int) -> None:
        super().__init__()
        self._target_port = target_port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()  # until the server side is connected
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            _, server = await loop.create_connection(_Side, "127.0.0.1", self._target_port)
        except OSError:
            self.transport.close()
            return
        self.peer, server.peer = server, self
        assert server.transport is not None
        for side, other in ((self, server.transport), (server, self.transport)):
            for data in side.early:  # pause_reading() is not instant: some may have come
                other.write(data)
            side.early.clear()
        self.transport.resume_reading()


async def serve(port: int, target_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Browser(target_port), "127.0.0.1", port,
                                      backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tunnel_relay")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target-port", type=int, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.port, args.target_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
