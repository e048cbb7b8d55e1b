"""RFB limits, errors, VNC authentication (DES of the challenge) and the parsing both
handshakes share. No I/O."""

from __future__ import annotations

import struct

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

MAX_REASON_LENGTH = 4096
"""Longest failure reason accepted from a VNC server, in bytes."""

CLIENT_INIT_TYPE = -1
"""`ClientMessage.type` reported for the 1-byte ClientInit (it has no type byte)."""

VERSION_LENGTH = 12
VERSION_MESSAGES = {3: b"RFB 003.003\n", 7: b"RFB 003.007\n", 8: b"RFB 003.008\n"}
APPLE_MINOR = 889  # macOS Screen Sharing announces 3.889 but speaks 3.3.

SECURITY_INVALID = 0
SECURITY_NONE = 1
SECURITY_VNC_AUTH = 2
CHALLENGE_LENGTH = 16
U32 = struct.Struct(">I")


class RfbProtocolError(Exception):
    """The peer sent malformed, hostile or unsupported RFB data.

    The connection cannot continue. The message is safe to log: it never contains the
    VNC password, and peer-supplied text in it is reduced to printable characters.
    """


class RfbAuthFailed(RfbProtocolError):
    """The VNC server rejected our authentication (SecurityResult != 0).

    `reason` is the server's sanitized explanation (RFB 3.8 only), or "" if none was sent.
    """

    def __init__(self, reason: str = "") -> None:
        self.reason = reason
        message = "VNC server rejected authentication"
        super().__init__(f"{message}: {reason}" if reason else message)


# --- VNC authentication ---------------------------------------------------------------

# VNC stores DES key bytes with their bits mirrored (a historical quirk of the d3des code).
_BIT_REVERSED = bytes(int(f"{value:08b}"[::-1], 2) for value in range(256))


def vnc_des_key(password: str) -> bytes:
    """The 8-byte DES key VNC derives from `password`. Raises ValueError."""
    if not password:
        raise ValueError("VNC password must not be empty")
    try:
        raw = password.encode("latin-1")
    except UnicodeEncodeError:
        # Not `from exc`: the chained exception would quote the password.
        raise ValueError("VNC password must be latin-1 encodable") from None
    return raw[:8].ljust(8, b"\x00").translate(_BIT_REVERSED)


def des_encrypt(key: bytes, challenge: bytes) -> bytes:
    # Single DES is 3DES-EDE with K1 = K2 = K3; the decrepit module is the supported,
    # warning-free home of TripleDES. ECB is what the RFB protocol prescribes.
    cipher = Cipher(TripleDES(key * 3), modes.ECB())  # noqa: S305
    encryptor = cipher.encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


def vnc_auth_response(password: str, challenge: bytes) -> bytes:
    """Answer a VNC authentication challenge (RFC 6143 7.2.2).

    Encrypts the 16-byte `challenge` with DES in ECB mode. The key is the password
    encoded as latin-1, truncated or NUL-padded to 8 bytes, each byte bit-reversed; only
    the first 8 characters of a longer password matter (as in QEMU). Pure function.

    Raises ValueError for an empty or non-latin-1 password or a challenge that is not
    16 bytes long; the message never contains the password.
    """
    key = vnc_des_key(password)
    if len(challenge) != CHALLENGE_LENGTH:
        raise ValueError(f"VNC challenge must be {CHALLENGE_LENGTH} bytes, got {len(challenge)}")
    return des_encrypt(key, bytes(challenge))


# --- shared handshake helpers -----------------------------------------------------------


def _printable(text: str) -> str:
    return "".join(char if char.isprintable() else "?" for char in text)


def parse_version(raw: bytes, peer: str) -> tuple[int, int]:
    """(major, minor) of a 12-byte ProtocolVersion message, or RfbProtocolError."""
    if (
        raw[:4] != b"RFB "
        or raw[7:8] != b"."
        or raw[11:12] != b"\n"
        or not raw[4:7].isdigit()
        or not raw[8:11].isdigit()
    ):
        raise RfbProtocolError(f"{peer} sent a malformed RFB version: {raw!r}")
    return int(raw[4:7]), int(raw[8:11])


def read_reason(buf: bytearray, offset: int) -> str | None:
    """Decode a u32-length-prefixed reason string at `offset`; None if incomplete.

    Raises RfbProtocolError if the announced length exceeds MAX_REASON_LENGTH, before
    waiting for (or buffering) the text.
    """
    if len(buf) < offset + 4:
        return None
    (length,) = U32.unpack_from(buf, offset)
    if length > MAX_REASON_LENGTH:
        raise RfbProtocolError(
            f"VNC server sent a {length}-byte reason (limit {MAX_REASON_LENGTH})"
        )
    start = offset + 4
    if len(buf) < start + length:
        return None
    return _printable(bytes(buf[start : start + length]).decode("utf-8", "replace"))

