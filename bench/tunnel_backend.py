"""The fake desktop of the tunnel benchmark: a process serving two loopback ports.

* the **RFB port** plays QEMU's VNC server for the broker: RFB 3.8, security type 2
  only, the DES answer checked with `broker.rfb.vnc_auth_response` against the password
  the broker last set (the broker-side fake host writes it to `--password-file`), then
  ClientInit/ServerInit;
* the **plain port** is the same thing without RFB, for websockify, the raw relay and
  direct connections.

After that both read the control message (bench.tunnel_wire) and stream, sink, echo or
idle. Run as `python -m bench.tunnel_backend --rfb-port P --plain-port Q
--password-file F`; it prints "ready" once both ports listen and runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import struct
import sys
import time
from pathlib import Path
from typing import cast

import uvloop

from bench.tunnel_wire import (
    CONTROL_LENGTH,
    SYNC_MESSAGE,
    Mode,
    ack_message,
    downstream_buffer,
    parse_control,
    server_init,
    update_of_size,
)
from broker.rfb import vnc_auth_response

READ_CHUNK = 256 * 1024
PACED_HIGH_WATER = 256 * 1024  # a few frames: a VNC server does not queue megabytes


class Backend:
    def __init__(self, password_file: Path) -> None:
        self._password_file = password_file
        self._downstream = downstream_buffer()
        self._updates: dict[int, bytes] = {}

    async def rfb_client(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            try:
                if await self._authenticate(reader, writer):
                    await self._serve(reader, writer)
            finally:
                writer.close()

    async def plain_client(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            try:
                await self._serve(reader, writer)
            finally:
                writer.close()

    async def _authenticate(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> bool:
        writer.write(b"RFB 003.008\n")
        if await reader.readexactly(12) != b"RFB 003.008\n":
            return False
        writer.write(bytes([1, 2]))  # one security type: VNC authentication
        if (await reader.readexactly(1))[0] != 2:
            return False
        challenge = os.urandom(16)
        writer.write(challenge)
        response = await reader.readexactly(16)
        password = self._password_file.read_text(encoding="ascii")
        if response != vnc_auth_response(password, challenge):
            reason = b"wrong password"
            writer.write(struct.pack(">II", 1, len(reason)) + reason)
            await writer.drain()
            return False
        writer.write(struct.pack(">I", 0))
        await reader.readexactly(1)  # ClientInit
        writer.write(server_init())
        await writer.drain()
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode, rate, frame_bytes = parse_control(await reader.readexactly(CONTROL_LENGTH))
        if mode is Mode.STREAM:
            watcher = asyncio.create_task(reader.read())  # EOF or reset ends the stream
            streamer = asyncio.create_task(self._stream(writer, rate, frame_bytes))
            try:
                await asyncio.wait([watcher, streamer], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (watcher, streamer):
                    task.cancel()
                await asyncio.gather(watcher, streamer, return_exceptions=True)
        elif mode is Mode.SINK:
            # From here on the bytes go to a protocol that counts them where they land,
            # without a StreamReader's two copies (this side must not be the bottleneck).
            # The client waits for the "ready" ACK, so the StreamReader holds nothing.
            sink = _Sink(cast(asyncio.Transport, writer.transport))
            writer.transport.set_protocol(sink)
            writer.write(ack_message(0))
            await sink.closed
        elif mode is Mode.ECHO:
            while data := await reader.read(READ_CHUNK):
                writer.write(data)
        else:
            while await reader.read(READ_CHUNK):
                pass

    async def _stream(self, writer: asyncio.StreamWriter, rate: int, frame_bytes: int) -> None:
        if rate <= 0:
            data = self._downstream
            while True:
                writer.write(data)
                await writer.drain()
        update = self._updates.get(frame_bytes)
        if update is None:
            update = self._updates.setdefault(frame_bytes, update_of_size(frame_bytes))
        interval = len(update) / rate
        due = time.monotonic()
        transport = writer.transport
        while True:
            now = time.monotonic()
            if due < now - interval:
                # More than a frame behind (the socket would not take more): skip the
                # missed frames, as a VNC server merges updates it could not send. They
                # stay offered, and the delivered share shows the loss.
                due = now
            writer.write(update)
            due += interval
            if transport.get_write_buffer_size() > PACED_HIGH_WATER:
                await writer.drain()
            await asyncio.sleep(max(0.0, due - time.monotonic()))


class _Sink(asyncio.Protocol):
    """Consumes; answers every sync message with the bytes consumed up to its end."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._count = 0
        self._tail = b""  # the end of the previous chunk: a sync message may straddle two
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        keep = len(SYNC_MESSAGE) - 1
        ends = []
        straddling = (self._tail + data[:keep]).find(SYNC_MESSAGE)
        if straddling >= 0:
            ends.append(straddling + len(SYNC_MESSAGE) - len(self._tail))
        found = data.find(SYNC_MESSAGE)
        while found >= 0:
            ends.append(found + len(SYNC_MESSAGE))
            found = data.find(SYNC_MESSAGE, found + 1)
        for end in ends:
            self._transport.write(ack_message(self._count + end))
        self._count += len(data)
        self._tail = data[-keep:] if len(data) >= keep else (self._tail + data)[-keep:]

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def serve(rfb_port: int, plain_port: int, password_file: Path) -> None:
    backend = Backend(password_file)
    rfb = await asyncio.start_server(backend.rfb_client, "127.0.0.1", rfb_port,
                                     backlog=1024, limit=READ_CHUNK)
    plain = await asyncio.start_server(backend.plain_client, "127.0.0.1", plain_port,
                                       backlog=1024, limit=READ_CHUNK)
    print("ready", flush=True)
    async with rfb, plain:
        await asyncio.gather(rfb.serve_forever(), plain.serve_forever())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tunnel_backend")
    parser.add_argument("--rfb-port", type=int, required=True)
    parser.add_argument("--plain-port", type=int, required=True)
    parser.add_argument("--password-file", type=Path, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.rfb_port, args.plain_port, args.password_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
