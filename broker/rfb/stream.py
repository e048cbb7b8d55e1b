"""The browser -> server message stream after the handshakes: each message's length
bounded before it is buffered, key and pointer events reported as input. No I/O."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from broker.rfb.common import (
    CLIENT_INIT_TYPE,
    RfbProtocolError,
)

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

