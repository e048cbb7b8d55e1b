"""The bytes of the tunnel benchmark, shared by its load generator and its fake desktop.

Every byte the load generator sends after the RFB handshake is a valid RFB client
message, so the broker's parser accepts the same stream that websockify and the raw
relay carry to a plain TCP server:

* a **control message** first: a SetEncodings whose four "encodings" are a magic number,
  the mode (stream, sink, echo, idle) and two mode parameters; a VNC server would
  ignore unknown encodings, the fake desktop reads them as orders;
* **upstream payload** (browser -> server): a repeating mix that stands for a clipboard
  paste amid ordinary input: one 60 KiB ClientCutText, then 24 PointerEvents (a mouse
  drag), 8 KeyEvent down/up pairs (typing) and 4 FramebufferUpdateRequests - 65
  messages per 61.9 KiB, sent in 64 KiB websocket messages that do not respect message
  boundaries (the parser must reassemble);
* a **sync message** ends an upstream round: a ClientCutText with a fixed marker text.
  The fake desktop answers it with a ServerCutText carrying the bytes it consumed, so
  the client times delivery, not buffering, and checks that nothing was lost;
* **downstream payload** (server -> browser): FramebufferUpdates with one raw 32-bit
  rectangle of incompressible pixels.

Pure functions and constants only; no I/O.
"""

from __future__ import annotations

import enum
import random
import struct

MAGIC = 0x56444942  # "VDIB"
CONTROL = struct.Struct(">BxHiiii")  # SetEncodings header + 4 encodings
CONTROL_LENGTH = CONTROL.size
SYNC_TEXT = b"vdi-bench/sync/6b1e0f93c2"
SYNC_MESSAGE = struct.pack(">B3xI", 6, len(SYNC_TEXT)) + SYNC_TEXT
ACK = struct.Struct(">B3xIQ")  # ServerCutText of 8 bytes: the count
ACK_LENGTH = ACK.size
KEY_EVENT_LENGTH = 8
UPSTREAM_CHUNK = 64 * 1024
CUT_TEXT_BYTES = 60 * 1024


class Mode(enum.IntEnum):
    STREAM = 1  # send FramebufferUpdates: as fast as possible, or paced (rate, frame bytes)
    SINK = 2  # ACK 0 when ready; consume; answer each sync message with an ACK of the count
    ECHO = 3  # send back whatever arrives
    IDLE = 4  # hold the connection, send nothing


def control_message(mode: Mode, rate: int = 0, frame_bytes: int = 0) -> bytes:
    """The first message after the handshake (a SetEncodings with 4 encodings)."""
    return CONTROL.pack(2, 4, MAGIC, int(mode), rate, frame_bytes)


def parse_control(data: bytes) -> tuple[Mode, int, int]:
    """(mode, rate, frame_bytes); raises ValueError for anything else."""
    kind, count, magic, mode, rate, frame_bytes = CONTROL.unpack(data)
    if kind != 2 or count != 4 or magic != MAGIC:
        raise ValueError("not a benchmark control message")
    return Mode(mode), rate, frame_bytes


def ack_message(count: int) -> bytes:
    return ACK.pack(3, 8, count)


def parse_ack(data: bytes) -> int:
    kind, length, count = ACK.unpack(data)
    if kind != 3 or length != 8:
        raise ValueError("not a benchmark ACK")
    return int(count)


def key_event(keysym: int, down: bool = True) -> bytes:
    return struct.pack(">BBxxI", 4, int(down), keysym)


def _pixels(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def framebuffer_update(width: int, height: int, seed: int = 1, x: int = 0, y: int = 0) -> bytes:
    """One FramebufferUpdate with one raw rectangle of width x height 32-bit pixels."""
    header = struct.pack(">BxH", 0, 1) + struct.pack(">HHHHi", x, y, width, height, 0)
    return header + _pixels(width * height * 4, seed)


def update_of_size(size: int, seed: int = 2) -> bytes:
    """A FramebufferUpdate of about `size` bytes (a band 256 pixels wide)."""
    height = max(1, (size - 16) // (256 * 4))
    return framebuffer_update(256, height, seed)


def downstream_buffer() -> bytes:
    """About 1 MiB of back-to-back full-speed updates (4 x 256x256 tiles)."""
    return b"".join(framebuffer_update(256, 256, seed, x=256 * seed) for seed in range(4))


def upstream_unit() -> bytes:
    """One repetition of the upstream mix (see the module docstring)."""
    rng = random.Random(3)
    text = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz \n") for _ in range(CUT_TEXT_BYTES))
    parts = [struct.pack(">B3xI", 6, len(text)), text]
    for i in range(24):
        parts.append(struct.pack(">BBHH", 5, 1, 100 + i * 3, 200 + i * 2))
    for i in range(8):
        parts.append(key_event(0x61 + i, True))
        parts.append(key_event(0x61 + i, False))
    for _ in range(4):
        parts.append(struct.pack(">BBHHHH", 3, 1, 0, 0, 1280, 800))
    unit = b"".join(parts)
    assert SYNC_TEXT not in unit
    return unit


def upstream_chunks(units: int = 4) -> list[bytes]:
    """Websocket-message-sized slices of `units` repetitions; sending the list over and
    over is a valid RFB stream (the slices ignore message boundaries on purpose)."""
    stream = upstream_unit() * units
    return [stream[i:i + UPSTREAM_CHUNK] for i in range(0, len(stream), UPSTREAM_CHUNK)]


def server_init(width: int = 1280, height: int = 800, name: bytes = b"bench") -> bytes:
    """ServerInit for a 32-bit true-colour framebuffer."""
    pixel_format = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
    return struct.pack(">HH", width, height) + pixel_format + struct.pack(">I", len(name)) + name
