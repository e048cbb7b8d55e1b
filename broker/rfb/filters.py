"""What of the browser's message stream reaches the VNC server: everything for the
clerk's own console, only display requests for the helpdesk's read-only view. No I/O.

Both force the shared flag of ClientInit: a client asking for the desktop exclusively
would make QEMU drop every other client (the clerk's console or the helpdesk's view).
"""

from __future__ import annotations

from broker.rfb.common import CLIENT_INIT_TYPE
from broker.rfb.stream import ClientStreamParser

SHARED = 1

# Display requests a read-only viewer may send: how the screen is encoded and when it
# is sent (SetPixelFormat, SetEncodings, FramebufferUpdateRequest, and the flow control
# of continuous updates and fences). Nothing here reaches the guest. Everything else is
# dropped: key and pointer events, ClientCutText, QEMU's extended key events and audio,
# XVP (power actions), SetDesktopSize (the guest's resolution).
DISPLAY_REQUESTS = frozenset({CLIENT_INIT_TYPE, 0, 2, 3, 150, 248})
SET_ENCODINGS = 2
# The extended clipboard pseudo-encoding: a viewer announcing it would be sent what the
# clerk copies (ID numbers, say). A read-only view's SetEncodings goes without it, so the
# server never offers the clerk's clipboard to the viewer.
EXTENDED_CLIPBOARD = (0xC0A1E5CE).to_bytes(4, "big")


def without_clipboard(message: bytes) -> bytes:
    """A complete SetEncodings message without the extended clipboard pseudo-encoding."""
    encodings = [message[i:i + 4] for i in range(4, len(message), 4)]
    kept = [e for e in encodings if e != EXTENDED_CLIPBOARD]
    return message[:2] + len(kept).to_bytes(2, "big") + b"".join(kept)


class ClientFilter:
    """Feeds the browser's stream after the security phase (ClientInit first) through
    the parser and says what to forward. Sans-I/O.

    `feed(data)` returns (the bytes to send to the VNC server, whether they carry
    keyboard or mouse input). With `read_only=False` that is `data` itself (its first
    byte, the ClientInit, set to shared). With `read_only=True` it is the display
    requests among the complete messages, whole and in order; the bytes of other
    messages are counted in `dropped` and never kept (a clipboard transfer is skipped,
    not buffered); a display request split across chunks is held until complete
    (at most a SetEncodings of 1024 encodings).

    Raises RfbProtocolError as ClientStreamParser does (unknown or malformed messages,
    over-long clipboard text); errors are final.
    """

    def __init__(self, *, read_only: bool, max_cut_text: int = 1 << 20) -> None:
        self._parser = ClientStreamParser(max_cut_text=max_cut_text, skip_client_init=True)
        self._read_only = read_only
        self._client_init_due = True
        self._held = bytearray()  # the start of an incomplete display request
        self._skipped = 0  # bytes seen of an incomplete message that is dropped
        self.dropped = 0  # complete messages dropped (read-only)

    def __repr__(self) -> str:
        return f"<ClientFilter read_only={self._read_only} dropped={self.dropped}>"

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        messages = self._parser.feed(data)  # raises RfbProtocolError
        if not self._read_only:
            has_input = any(m.input is not None for m in messages)
            if self._client_init_due and data:
                self._client_init_due = False
                data = bytes([SHARED]) + data[1:]
            return data, has_input
        out = bytearray()
        pos = 0
        for message in messages:
            seen = len(self._held) + self._skipped  # bytes of it from earlier chunks
            end = pos + message.length - seen
            if message.type in DISPLAY_REQUESTS:
                if message.type == CLIENT_INIT_TYPE:
                    out.append(SHARED)
                elif message.type == SET_ENCODINGS:
                    out += without_clipboard(bytes(self._held) + data[pos:end])
                else:
                    out += self._held
                    out += data[pos:end]
            else:
                self.dropped += 1
            self._held.clear()
            self._skipped = 0
            pos = end
        if pos < len(data):  # the start (or more) of a message not complete yet
            first = self._held[0] if self._held else (None if self._skipped else data[pos])
            if first is not None and first in DISPLAY_REQUESTS:
                self._held += data[pos:]
            else:
                self._skipped += len(data) - pos
        return bytes(out), False
