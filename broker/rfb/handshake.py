"""The two RFB handshakes the broker runs: as a client towards QEMU (answering VNC
authentication itself) and as a server towards the browser (offering only "None").
No I/O: bytes in, bytes and events out."""

from __future__ import annotations

import enum

from broker.rfb.common import (
    APPLE_MINOR,
    CHALLENGE_LENGTH,
    SECURITY_INVALID,
    SECURITY_NONE,
    SECURITY_VNC_AUTH,
    U32,
    VERSION_LENGTH,
    VERSION_MESSAGES,
    RfbAuthFailed,
    RfbProtocolError,
    des_encrypt,
    parse_version,
    read_reason,
    vnc_des_key,
)


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
        self._key = vnc_des_key(password)  # secret-equivalent; never in repr or messages
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
            if len(buf) < VERSION_LENGTH:
                return None
            major, minor = parse_version(self._take(VERSION_LENGTH), "VNC server")
            if major < 3:
                raise RfbProtocolError(f"VNC server speaks unsupported RFB {major}.{minor}")
            if major > 3:
                self._minor = 8
            else:
                self._minor = minor if minor in VERSION_MESSAGES else 3
            self._state = (
                _ServerState.SECURITY_TYPE_33 if self._minor == 3 else _ServerState.SECURITY_TYPES
            )
            return VERSION_MESSAGES[self._minor]

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
            if SECURITY_VNC_AUTH in offered:
                self._state = _ServerState.CHALLENGE
                return bytes([SECURITY_VNC_AUTH])
            if SECURITY_NONE in offered and self._allow_none:
                # 3.8 confirms None with a SecurityResult; 3.7 goes straight to init.
                self._state = (
                    _ServerState.SECURITY_RESULT if self._minor == 8 else _ServerState.DONE
                )
                return bytes([SECURITY_NONE])
            refused = " (None is not allowed)" if SECURITY_NONE in offered else ""
            raise RfbProtocolError(
                f"no supported security type offered by VNC server: {offered}{refused}"
            )

        if state is _ServerState.SECURITY_TYPE_33:
            if len(buf) < 4:
                return None
            (security_type,) = U32.unpack_from(buf)
            if security_type == SECURITY_INVALID:
                self._raise_refusal_when_complete(4)
                return None
            del buf[:4]
            if security_type == SECURITY_VNC_AUTH:
                self._state = _ServerState.CHALLENGE
                return b""
            if security_type == SECURITY_NONE and self._allow_none:
                self._state = _ServerState.DONE
                return b""
            refused = " (None is not allowed)" if security_type == SECURITY_NONE else ""
            raise RfbProtocolError(
                f"unsupported security type from VNC server: {security_type}{refused}"
            )

        if state is _ServerState.CHALLENGE:
            if len(buf) < CHALLENGE_LENGTH:
                return None
            self._state = _ServerState.SECURITY_RESULT
            return des_encrypt(self._key, self._take(CHALLENGE_LENGTH))

        if state is _ServerState.SECURITY_RESULT:
            if len(buf) < 4:
                return None
            (result,) = U32.unpack_from(buf)
            if result == 0:
                del buf[:4]
                self._state = _ServerState.DONE
                return b""
            if self._minor != 8:
                raise RfbAuthFailed()
            reason = read_reason(buf, 4)
            if reason is None:
                return None
            raise RfbAuthFailed(reason)

        raise AssertionError(f"unreachable handshake state {state}")  # pragma: no cover

    def _raise_refusal_when_complete(self, offset: int) -> None:
        """The server refused the connection: raise once its reason (at `offset`) is complete."""
        reason = read_reason(self._buf, offset)
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
        return VERSION_MESSAGES[8]

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
            if self._state is _BrowserState.VERSION and len(self._buf) >= VERSION_LENGTH:
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
        raw = bytes(self._buf[:VERSION_LENGTH])
        del self._buf[:VERSION_LENGTH]
        major, minor = parse_version(raw, "browser")
        if major != 3 or (minor > 8 and minor != APPLE_MINOR):
            raise RfbProtocolError(f"browser asked for unsupported RFB {major}.{minor}")
        self._minor = minor if minor in VERSION_MESSAGES else 3
        if self._minor == 3:
            # 3.3: the server dictates the security type; no SecurityResult follows None.
            self._state = _BrowserState.DONE
            return U32.pack(SECURITY_NONE)
        self._state = _BrowserState.SECURITY_TYPE
        return bytes([1, SECURITY_NONE])

    def _on_security_type(self) -> bytes:
        chosen = self._buf[0]
        del self._buf[:1]
        if chosen != SECURITY_NONE:
            raise RfbProtocolError(f"browser chose unsupported security type {chosen}")
        self._state = _BrowserState.DONE
        # Only 3.8 confirms the None type with a SecurityResult.
        return U32.pack(0) if self._minor == 8 else b""


