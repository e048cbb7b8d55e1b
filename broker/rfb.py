"""Sans-I/O RFB (VNC, RFC 6143) core for the websocket console tunnel.

The broker sits between the browser (noVNC) and QEMU's VNC server:

* towards QEMU it is an RFB *client* and answers VNC authentication (security type 2)
  itself, with the per-connection password it set through libvirt (`ServerHandshake`);
* towards the browser it is an RFB *server* that offers only security type 1, "None"
  (`BrowserHandshake`), so the browser never sees the VNC password;
* after both handshakes the shell relays bytes, feeding the browser->server stream
  through `ClientStreamParser` to timestamp real user input and to bound lengths.

Nothing here does I/O, reads a clock or logs: every class takes bytes and returns bytes
or events. Everything read from a peer is treated as hostile; each length is bounded
before anything is buffered. Exception messages never contain the password and are safe
to log.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

__all__ = [
    "CLIENT_INIT_TYPE",
    "MAX_REASON_LENGTH",
    "BrowserHandshake",
    "ClientMessage",
    "ClientStreamParser",
    "InputKind",
    "RfbAuthFailed",
    "RfbProtocolError",
    "ServerHandshake",
    "vnc_auth_response",
]

MAX_REASON_LENGTH = 4096
"""Longest failure reason accepted from a VNC server, in bytes."""

CLIENT_INIT_TYPE = -1
"""`ClientMessage.type` reported for the 1-byte ClientInit (it has no type byte)."""

_VERSION_LENGTH = 12
_VERSION_MESSAGES = {3: b"RFB 003.003\n", 7: b"RFB 003.007\n", 8: b"RFB 003.008\n"}
_APPLE_MINOR = 889  # macOS Screen Sharing announces 3.889 but speaks 3.3.

_SECURITY_INVALID = 0
_SECURITY_NONE = 1
_SECURITY_VNC_AUTH = 2
_CHALLENGE_LENGTH = 16
_U32 = struct.Struct(">I")


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


def _vnc_des_key(password: str) -> bytes:
    """The 8-byte DES key VNC derives from `password`. Raises ValueError."""
    if not password:
        raise ValueError("VNC password must not be empty")
    try:
        raw = password.encode("latin-1")
    except UnicodeEncodeError:
        # Not `from exc`: the chained exception would quote the password.
        raise ValueError("VNC password must be latin-1 encodable") from None
    return raw[:8].ljust(8, b"\x00").translate(_BIT_REVERSED)


def _des_encrypt(key: bytes, challenge: bytes) -> bytes:
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
    key = _vnc_des_key(password)
    if len(challenge) != _CHALLENGE_LENGTH:
        raise ValueError(f"VNC challenge must be {_CHALLENGE_LENGTH} bytes, got {len(challenge)}")
    return _des_encrypt(key, bytes(challenge))


# --- shared handshake helpers -----------------------------------------------------------


def _printable(text: str) -> str:
    return "".join(char if char.isprintable() else "?" for char in text)


def _parse_version(raw: bytes, peer: str) -> tuple[int, int]:
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


def _read_reason(buf: bytearray, offset: int) -> str | None:
    """Decode a u32-length-prefixed reason string at `offset`; None if incomplete.

    Raises RfbProtocolError if the announced length exceeds MAX_REASON_LENGTH, before
    waiting for (or buffering) the text.
    """
    if len(buf) < offset + 4:
        return None
    (length,) = _U32.unpack_from(buf, offset)
    if length > MAX_REASON_LENGTH:
        raise RfbProtocolError(
            f"VNC server sent a {length}-byte reason (limit {MAX_REASON_LENGTH})"
        )
    start = offset + 4
    if len(buf) < start + length:
        return None
    return _printable(bytes(buf[start : start + length]).decode("utf-8", "replace"))


class _ServerState(enum.Enum):
    VERSION = enum.auto()
    SECURITY_TYPES = enum.auto()  # 3.7/3.8: u8 count + types
    SECURITY_TYPE_33 = enum.auto()  # 3.3: u32 type chosen by the server
    CHALLENGE = enum.auto()
    SECURITY_RESULT = enum.auto()
    DONE = enum.auto()
    FAILED = enum.auto()


class ServerHandshake:
    """Broker as RFB client towards the VNC server (QEMU). Sans-I/O.

    Feed every byte read from the server to `receive` and send what it returns, until
    `done`; then forward `leftover()` into the relay. Data may arrive in any
    fragmentation. The handshake ends after the security phase: ClientInit and
    ServerInit are left to the relay.

    Versions: 3.3, 3.7 and 3.8 are spoken as such; a server announcing a major version
    above 3 is answered with 3.8; any other 3.x (Apple's 3.889, UltraVNC's 3.14, ...)
    is treated as 3.3 as RFC 6143 7.1.1 prescribes; a major version below 3 is refused.

    Security: VNC authentication (2) is chosen whenever offered; otherwise "None" (1)
    if offered and `allow_none` is true. With `allow_none=False` a server that does not
    ask for a password is refused, as the broker never runs consoles without one.

    Any `RfbProtocolError` (or `RfbAuthFailed`) is final: later calls raise again.
    """

    def __init__(self, password: str, *, allow_none: bool = True) -> None:
        """Raises ValueError for an empty or non-latin-1 password."""
        self._key = _vnc_des_key(password)  # secret-equivalent; never in repr or messages
        self._allow_none = allow_none
        self._state = _ServerState.VERSION
        self._minor = 0
        self._buf = bytearray()
        self._leftover = b""

    def __repr__(self) -> str:
        return f"<ServerHandshake state={self._state.name}>"

    @property
    def done(self) -> bool:
        """True once the server accepted our security (SecurityResult OK, or None)."""
        return self._state is _ServerState.DONE

    def leftover(self) -> bytes:
        """Server bytes received after the security phase; b"" before `done`.

        They belong to the relay phase (normally there are none). Not consumed: every
        call returns the same bytes.
        """
        return self._leftover

    def receive(self, data: bytes) -> bytes:
        """Consume bytes read from the server; return the bytes to send to it (maybe b"").

        Raises RfbAuthFailed if the server rejects the password, RfbProtocolError for
        anything malformed or unsupported, RuntimeError if called after `done`.
        """
        if self._state is _ServerState.DONE:
            raise RuntimeError("ServerHandshake.receive() called after the handshake is done")
        if self._state is _ServerState.FAILED:
            raise RfbProtocolError("VNC server handshake already failed")
        self._buf += data
        replies: list[bytes] = []
        try:
            while not self.done:
                reply = self._step()
                if reply is None:
                    break
                replies.append(reply)
        except RfbProtocolError:
            self._state = _ServerState.FAILED
            self._buf.clear()
            raise
        if self.done:
            self._leftover = bytes(self._buf)
            self._buf.clear()
        return b"".join(replies)

    def _take(self, count: int) -> bytes:
        taken = bytes(self._buf[:count])
        del self._buf[:count]
        return taken

    def _step(self) -> bytes | None:
        """Advance one protocol step; return its reply (maybe b""), None if data is short."""
        buf = self._buf
        state = self._state
        if state is _ServerState.VERSION:
            if len(buf) < _VERSION_LENGTH:
                return None
            major, minor = _parse_version(self._take(_VERSION_LENGTH), "VNC server")
            if major < 3:
                raise RfbProtocolError(f"VNC server speaks unsupported RFB {major}.{minor}")
            if major > 3:
                self._minor = 8
            else:
                self._minor = minor if minor in _VERSION_MESSAGES else 3
            self._state = (
                _ServerState.SECURITY_TYPE_33 if self._minor == 3 else _ServerState.SECURITY_TYPES
            )
            return _VERSION_MESSAGES[self._minor]

        if state is _ServerState.SECURITY_TYPES:
            if not buf:
                return None
            count = buf[0]
            if count == 0:
                self._raise_refusal_when_complete(1)
                return None
            if len(buf) < 1 + count:
                return None
            offered = list(self._take(1 + count)[1:])
            if _SECURITY_VNC_AUTH in offered:
                self._state = _ServerState.CHALLENGE
                return bytes([_SECURITY_VNC_AUTH])
            if _SECURITY_NONE in offered and self._allow_none:
                # 3.8 confirms None with a SecurityResult; 3.7 goes straight to init.
                self._state = (
                    _ServerState.SECURITY_RESULT if self._minor == 8 else _ServerState.DONE
                )
                return bytes([_SECURITY_NONE])
            refused = " (None is not allowed)" if _SECURITY_NONE in offered else ""
            raise RfbProtocolError(
                f"no supported security type offered by VNC server: {offered}{refused}"
            )

        if state is _ServerState.SECURITY_TYPE_33:
            if len(buf) < 4:
                return None
            (security_type,) = _U32.unpack_from(buf)
            if security_type == _SECURITY_INVALID:
                self._raise_refusal_when_complete(4)
                return None
            del buf[:4]
            if security_type == _SECURITY_VNC_AUTH:
                self._state = _ServerState.CHALLENGE
                return b""
            if security_type == _SECURITY_NONE and self._allow_none:
                self._state = _ServerState.DONE
                return b""
            refused = " (None is not allowed)" if security_type == _SECURITY_NONE else ""
            raise RfbProtocolError(
                f"unsupported security type from VNC server: {security_type}{refused}"
            )

        if state is _ServerState.CHALLENGE:
            if len(buf) < _CHALLENGE_LENGTH:
                return None
            self._state = _ServerState.SECURITY_RESULT
            return _des_encrypt(self._key, self._take(_CHALLENGE_LENGTH))

        if state is _ServerState.SECURITY_RESULT:
            if len(buf) < 4:
                return None
            (result,) = _U32.unpack_from(buf)
            if result == 0:
                del buf[:4]
                self._state = _ServerState.DONE
                return b""
            if self._minor != 8:
                raise RfbAuthFailed()
            reason = _read_reason(buf, 4)
            if reason is None:
                return None
            raise RfbAuthFailed(reason)

        raise AssertionError(f"unreachable handshake state {state}")  # pragma: no cover

    def _raise_refusal_when_complete(self, offset: int) -> None:
        """The server refused the connection: raise once its reason (at `offset`) is complete."""
        reason = _read_reason(self._buf, offset)
        if reason is not None:
            raise RfbProtocolError(f"VNC server refused the connection: {reason}")


# --- browser side -------------------------------------------------------------------------


class _BrowserState(enum.Enum):
    NOT_STARTED = enum.auto()
    VERSION = enum.auto()
    SECURITY_TYPE = enum.auto()
    DONE = enum.auto()
    FAILED = enum.auto()


class BrowserHandshake:
    """Broker as RFB server towards the browser, offering only "None". Sans-I/O.

    Send `start()` first, then feed every byte from the browser to `receive` and send
    what it returns, until `done`; then forward `leftover()` (normally the ClientInit)
    to the VNC server.

    The browser must answer 3.3, 3.7 or 3.8 (3.0-3.6 and Apple's 3.889 count as 3.3,
    per RFC 6143 7.1.1); anything else, or choosing a security type other than None,
    raises RfbProtocolError and the shell closes the connection. Errors are final.
    """

    def __init__(self) -> None:
        self._state = _BrowserState.NOT_STARTED
        self._minor = 0
        self._buf = bytearray()
        self._leftover = b""

    def __repr__(self) -> str:
        return f"<BrowserHandshake state={self._state.name}>"

    def start(self) -> bytes:
        """The ProtocolVersion to send first: b"RFB 003.008\\n". Call exactly once."""
        if self._state is not _BrowserState.NOT_STARTED:
            raise RuntimeError("BrowserHandshake.start() called twice")
        self._state = _BrowserState.VERSION
        return _VERSION_MESSAGES[8]

    @property
    def done(self) -> bool:
        """True once the security phase is complete for the browser."""
        return self._state is _BrowserState.DONE

    def leftover(self) -> bytes:
        """Browser bytes after the security phase (e.g. ClientInit); b"" before `done`.

        Not consumed: every call returns the same bytes.
        """
        return self._leftover

    def receive(self, data: bytes) -> bytes:
        """Consume bytes from the browser; return the bytes to send to it (maybe b"").

        Raises RfbProtocolError for a bad version or security choice, RuntimeError if
        called before `start()` or after `done`.
        """
        if self._state is _BrowserState.NOT_STARTED:
            raise RuntimeError("BrowserHandshake.receive() called before start()")
        if self._state is _BrowserState.DONE:
            raise RuntimeError("BrowserHandshake.receive() called after the handshake is done")
        if self._state is _BrowserState.FAILED:
            raise RfbProtocolError("browser handshake already failed")
        self._buf += data
        replies: list[bytes] = []
        try:
            if self._state is _BrowserState.VERSION and len(self._buf) >= _VERSION_LENGTH:
                replies.append(self._on_version())
            if self._state is _BrowserState.SECURITY_TYPE and self._buf:
                replies.append(self._on_security_type())
        except RfbProtocolError:
            self._state = _BrowserState.FAILED
            self._buf.clear()
            raise
        if self.done:
            self._leftover = bytes(self._buf)
            self._buf.clear()
        return b"".join(replies)

    def _on_version(self) -> bytes:
        raw = bytes(self._buf[:_VERSION_LENGTH])
        del self._buf[:_VERSION_LENGTH]
        major, minor = _parse_version(raw, "browser")
        if major != 3 or (minor > 8 and minor != _APPLE_MINOR):
            raise RfbProtocolError(f"browser asked for unsupported RFB {major}.{minor}")
        self._minor = minor if minor in _VERSION_MESSAGES else 3
        if self._minor == 3:
            # 3.3: the server dictates the security type; no SecurityResult follows None.
            self._state = _BrowserState.DONE
            return _U32.pack(_SECURITY_NONE)
        self._state = _BrowserState.SECURITY_TYPE
        return bytes([1, _SECURITY_NONE])

    def _on_security_type(self) -> bytes:
        chosen = self._buf[0]
        del self._buf[:1]
        if chosen != _SECURITY_NONE:
            raise RfbProtocolError(f"browser chose unsupported security type {chosen}")
        self._state = _BrowserState.DONE
        # Only 3.8 confirms the None type with a SecurityResult.
        return _U32.pack(0) if self._minor == 8 else b""


# --- browser -> server message stream ----------------------------------------------------


class InputKind(enum.Enum):
    """Kinds of real user input, for idle detection."""

    KEY = "key"
    POINTER = "pointer"


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """One complete browser->server message.

    `type` is the RFB message type (CLIENT_INIT_TYPE for ClientInit), `length` the
    total bytes of the message including its header, `input` the kind of user input it
    carries, or None.
    """

    type: int
    length: int
    input: InputKind | None


_SET_PIXEL_FORMAT = 0
_SET_ENCODINGS = 2
_FRAMEBUFFER_UPDATE_REQUEST = 3
_KEY_EVENT = 4
_POINTER_EVENT = 5
_CLIENT_CUT_TEXT = 6
_ENABLE_CONTINUOUS_UPDATES = 150
_CLIENT_FENCE = 248
_XVP = 250
_SET_DESKTOP_SIZE = 251
_QEMU = 255
_QEMU_EXTENDED_KEY_EVENT = 0
_QEMU_AUDIO = 1

_MAX_ENCODINGS = 1024
_MAX_FENCE_PAYLOAD = 64
_U16 = struct.Struct(">H")
_S32 = struct.Struct(">i")

_CLIENT_INIT = ClientMessage(CLIENT_INIT_TYPE, 1, None)
# Messages whose length is fixed by their type byte; shared instances (they are frozen).
_FIXED_MESSAGES = {
    message.type: message
    for message in (
        ClientMessage(_SET_PIXEL_FORMAT, 20, None),
        ClientMessage(_FRAMEBUFFER_UPDATE_REQUEST, 10, None),
        ClientMessage(_KEY_EVENT, 8, InputKind.KEY),
        ClientMessage(_POINTER_EVENT, 6, InputKind.POINTER),
        ClientMessage(_ENABLE_CONTINUOUS_UPDATES, 10, None),
        ClientMessage(_XVP, 4, None),
    )
}
_QEMU_EXTENDED_KEY = ClientMessage(_QEMU, 12, InputKind.KEY)
_QEMU_AUDIO_LENGTHS = {0: 4, 1: 4, 2: 10}  # enable, disable, set format


class ClientStreamParser:
    """Parses the browser->server RFB message stream after the security phase.

    `feed` returns the messages each chunk completes and keeps partial state between
    calls, so any fragmentation gives the same messages. Payloads are counted, not
    buffered: memory stays bounded by the largest message header (9 bytes) however big
    a clipboard transfer is, and each call copies its input at most once.

    With `skip_client_init=True` the first byte is taken as the 1-byte ClientInit and
    reported as ClientMessage(CLIENT_INIT_TYPE, 1, None).

    Raises RfbProtocolError for an unknown message type (the stream cannot be
    resynchronised), more than 1024 encodings, a ClientCutText longer than
    `max_cut_text` (noVNC's extended clipboard sends a negative length; its absolute
    value counts), a fence payload over 64 bytes, or an unknown QEMU subtype/operation.
    Messages completed earlier in the failing chunk are not returned; errors are final.
    """

    def __init__(self, max_cut_text: int = 1 << 20, *, skip_client_init: bool = False) -> None:
        """Raises ValueError for a negative `max_cut_text`."""
        if max_cut_text < 0:
            raise ValueError("max_cut_text must not be negative")
        self._max_cut_text = max_cut_text
        self._expect_client_init = skip_client_init
        self._header = bytearray()  # start of a message whose length is not yet known
        self._pending: ClientMessage | None = None  # message being skipped over
        self._remaining = 0  # bytes of `_pending` still to come
        self._failed = False

    def __repr__(self) -> str:
        return f"<ClientStreamParser buffered={len(self._header)} remaining={self._remaining}>"

    def feed(self, data: bytes) -> list[ClientMessage]:
        """Consume the next chunk of the stream; return the messages it completes, in order."""
        if self._failed:
            raise RfbProtocolError("browser message stream already failed")
        if data and self._pending is None and not self._header and not self._expect_client_init:
            # The common case first: noVNC sends each KeyEvent, PointerEvent and update
            # request as a websocket message of its own - exactly one fixed-size message.
            fixed = _FIXED_MESSAGES.get(data[0])
            if fixed is not None and fixed.length == len(data):
                return [fixed]
        try:
            with memoryview(data) as view:
                return self._feed(view)
        except RfbProtocolError:
            self._failed = True
            self._header.clear()
            raise

    def _feed(self, view: memoryview) -> list[ClientMessage]:
        messages: list[ClientMessage] = []
        start = 0
        if self._pending is not None:
            start = min(self._remaining, len(view))
            self._remaining -= start
            if self._remaining:
                return messages
            messages.append(self._pending)
            self._pending = None

        buf: bytearray | memoryview
        if self._header:
            self._header += view[start:]
            buf, pos = self._header, 0
        else:
            buf, pos = view, start
        end = len(buf)

        if self._expect_client_init and pos < end:
            self._expect_client_init = False
            messages.append(_CLIENT_INIT)
            pos += 1

        while pos < end:
            message = self._measure(buf, pos, end - pos)
            if message is None:
                break
            if message.length <= end - pos:
                messages.append(message)
                pos += message.length
            else:
                self._pending = message
                self._remaining = message.length - (end - pos)
                pos = end

        self._header = bytearray(buf[pos:])
        return messages

    def _measure(
        self, buf: bytearray | memoryview, pos: int, available: int
    ) -> ClientMessage | None:
        """The message starting at buf[pos], None if its header is still incomplete."""
        message_type = buf[pos]
        fixed = _FIXED_MESSAGES.get(message_type)
        if fixed is not None:
            return fixed

        if message_type == _SET_ENCODINGS:
            if available < 4:
                return None
            (count,) = _U16.unpack_from(buf, pos + 2)
            if count > _MAX_ENCODINGS:
                raise RfbProtocolError(f"SetEncodings with {count} encodings (limit 1024)")
            return ClientMessage(message_type, 4 + 4 * count, None)

        if message_type == _CLIENT_CUT_TEXT:
            if available < 8:
                return None
            (signed_length,) = _S32.unpack_from(buf, pos + 4)
            length = abs(signed_length)
            if length > self._max_cut_text:
                raise RfbProtocolError(
                    f"ClientCutText of {length} bytes (limit {self._max_cut_text})"
                )
            return ClientMessage(message_type, 8 + length, None)

        if message_type == _CLIENT_FENCE:
            if available < 9:
                return None
            payload = buf[pos + 8]
            if payload > _MAX_FENCE_PAYLOAD:
                raise RfbProtocolError(f"ClientFence with a {payload}-byte payload (limit 64)")
            return ClientMessage(message_type, 9 + payload, None)

        if message_type == _SET_DESKTOP_SIZE:
            if available < 7:
                return None
            return ClientMessage(message_type, 8 + 16 * buf[pos + 6], None)

        if message_type == _QEMU:
            if available < 2:
                return None
            subtype = buf[pos + 1]
            if subtype == _QEMU_EXTENDED_KEY_EVENT:
                return _QEMU_EXTENDED_KEY
            if subtype == _QEMU_AUDIO:
                if available < 4:
                    return None
                (operation,) = _U16.unpack_from(buf, pos + 2)
                length = _QEMU_AUDIO_LENGTHS.get(operation)
                if length is None:
                    raise RfbProtocolError(f"unknown QEMU audio operation {operation}")
                return ClientMessage(message_type, length, None)
            raise RfbProtocolError(f"unknown QEMU client message subtype {subtype}")

        raise RfbProtocolError(f"unknown client message type {message_type}")
