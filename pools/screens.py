"""A desktop's screen as a PNG: libvirt hands QEMU's screen dump over as PPM (P6);
the helpdesk's browser wants PNG. Pure: `ppm_to_png` parses the dump strictly (the bytes
come from a guest's host, bounded in size, never trusted to match their header) and
writes a PNG with the standard library's zlib."""

from __future__ import annotations

import re
import struct
import zlib

MAX_SIDE = 8192  # pixels; larger than any console a desktop draws
_HEADER = re.compile(rb"\AP6\s+(?:#[^\n]*\n\s*)*(\d+)\s+(?:#[^\n]*\n\s*)*(\d+)\s+"
                     rb"(?:#[^\n]*\n\s*)*(\d+)\s")


class BadScreenDump(ValueError):
    """The bytes are not a screen dump this module reads; the message says why."""


def ppm_to_png(ppm: bytes) -> bytes:
    """The PNG of a binary PPM (P6, 8 bits per channel). Raises BadScreenDump."""
    m = _HEADER.match(ppm[:256])
    if m is None:
        raise BadScreenDump("not a binary PPM (P6) image")
    width, height, maxval = (int(g) for g in m.groups())
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise BadScreenDump(f"a {width}x{height} screen is not one a desktop has")
    if maxval != 255:
        raise BadScreenDump(f"{maxval + 1} levels per channel; 256 expected")
    pixels = ppm[m.end():]
    row = width * 3
    if len(pixels) != row * height:
        raise BadScreenDump(f"{len(pixels)} bytes of pixels for {width}x{height}: "
                            f"{row * height} expected")
    raw = b"".join(b"\x00" + pixels[y * row:(y + 1) * row] for y in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) of a PNG (for checks and tests). Raises BadScreenDump."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise BadScreenDump("not a PNG")
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)
