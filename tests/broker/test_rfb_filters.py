"""The read-only view's filter (broker.rfb.filters) with real RFB byte sequences, as
noVNC sends them: display requests reach the VNC server whole and in order, every input
message (keys, pointer, clipboard, QEMU's extended keys and audio, XVP power actions,
desktop resizing) is dropped, however the stream is cut into chunks; ClientInit always
asks for a shared desktop; unknown or malformed messages end the stream."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.rfb import ClientFilter, RfbProtocolError
from tests.broker.test_rfb import (
    ENABLE_CONTINUOUS_UPDATES,
    FRAMEBUFFER_UPDATE_REQUEST,
    QEMU_AUDIO_DISABLE,
    QEMU_AUDIO_ENABLE,
    QEMU_AUDIO_SET_FORMAT,
    SET_PIXEL_FORMAT,
    XVP,
    cut_text,
    fence,
    key_event,
    pointer_event,
    qemu_extended_key,
    set_desktop_size,
    set_encodings,
)

# noVNC 1.x right after the handshake: its pixel format, its encodings (Tight, ZRLE,
# Hextile, Raw, the pseudo-encodings incl. QEMU extended key events and LED state)
NOVNC_ENCODINGS = set_encodings([7, 16, 5, 1, 0, -32, -223, -224, -239, -258, -261,
                                 -307, -308, -309, -312, -313, 0x574D5664, -1063131698])
# what the server gets of it from a read-only view: no extended clipboard (the clerk's
# clipboard is never offered to the viewer)
NOVNC_ENCODINGS_VIEWED = set_encodings([7, 16, 5, 1, 0, -32, -223, -224, -239, -258, -261,
                                        -307, -308, -309, -312, -313, 0x574D5664])
NOVNC_PIXEL_FORMAT = bytes([0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 0, 8, 16,
                            0, 0, 0])
DISPLAY = [SET_PIXEL_FORMAT, NOVNC_PIXEL_FORMAT, NOVNC_ENCODINGS, set_encodings([]),
           FRAMEBUFFER_UPDATE_REQUEST, ENABLE_CONTINUOUS_UPDATES, fence(b"abc"),
           fence(b"f" * 64)]
INPUT = [key_event(True, 0x65), key_event(False, 0x65), pointer_event(5, 5, 1),
         pointer_event(6, 7, 0), qemu_extended_key(0x65, 0x12), cut_text(b"rm -rf ~\n"),
         cut_text(b"x" * 3000), cut_text(b"", -5) + b"\x10\x00\x00\x01\x00", XVP,
         set_desktop_size(1), QEMU_AUDIO_ENABLE, QEMU_AUDIO_DISABLE, QEMU_AUDIO_SET_FORMAT]


def viewed(message: bytes) -> bytes:
    """A display request as a read-only view forwards it."""
    return NOVNC_ENCODINGS_VIEWED if message == NOVNC_ENCODINGS else message


def run(f: ClientFilter, chunks: list[bytes]) -> bytes:
    return b"".join(f.feed(c)[0] for c in chunks)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted({p % (len(data) + 1) for p in points}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def test_a_viewer_session_as_novnc_sends_it_reaches_the_server_without_its_input() -> None:
    typed = b"".join(key_event(d, k) for k in b"reboot\r" for d in (True, False))
    stream = (b"\x00"  # ClientInit asking for the desktop exclusively
              + NOVNC_PIXEL_FORMAT + NOVNC_ENCODINGS + FRAMEBUFFER_UPDATE_REQUEST
              + pointer_event(100, 100, 1) + typed + qemu_extended_key()
              + FRAMEBUFFER_UPDATE_REQUEST + cut_text("密码".encode()) + XVP)
    f = ClientFilter(read_only=True)
    forwarded, has_input = f.feed(stream)
    assert forwarded == (b"\x01" + NOVNC_PIXEL_FORMAT + NOVNC_ENCODINGS_VIEWED
                         + FRAMEBUFFER_UPDATE_REQUEST * 2)
    assert not has_input
    assert f.dropped == 1 + 14 + 1 + 1 + 1


def test_each_input_message_alone_is_dropped_and_each_display_request_passes() -> None:
    for message in INPUT:
        f = ClientFilter(read_only=True)
        assert f.feed(b"\x01") == (b"\x01", False)
        assert f.feed(message) == (b"", False), message[:1]
        assert f.dropped == 1
    for message in DISPLAY:
        f = ClientFilter(read_only=True)
        f.feed(b"\x01")
        assert f.feed(message) == (viewed(message), False)
        assert f.dropped == 0


def test_a_view_never_announces_the_extended_clipboard() -> None:
    only = set_encodings([-1063131698])
    f = ClientFilter(read_only=True)
    assert run(f, cut(b"\x01" + NOVNC_ENCODINGS + only, [3, 9, 40])) == (
        b"\x01" + NOVNC_ENCODINGS_VIEWED + set_encodings([]))
    clerk = ClientFilter(read_only=False)  # the clerk's own console keeps its clipboard
    assert clerk.feed(b"\x01" + NOVNC_ENCODINGS)[0] == b"\x01" + NOVNC_ENCODINGS


def test_a_long_clipboard_text_is_skipped_not_buffered() -> None:
    f = ClientFilter(read_only=True, max_cut_text=1 << 20)
    f.feed(b"\x01" + cut_text(b"", 1 << 20)[:8])
    for _ in range(255):
        assert f.feed(b"y" * 4096) == (b"", False)
    assert not f._held and f._skipped == 8 + 255 * 4096  # counted, never kept
    assert f.feed(b"y" * 4096) == (b"", False)
    assert f.feed(FRAMEBUFFER_UPDATE_REQUEST) == (FRAMEBUFFER_UPDATE_REQUEST, False)
    assert f.dropped == 1


@pytest.mark.parametrize("stream", [
    b"\x01" + bytes([77]),  # an unknown message type
    b"\x01" + bytes([255, 9]),  # an unknown QEMU subtype
    b"\x01" + set_encodings([])[:2] + (2000).to_bytes(2, "big"),  # too many encodings
    b"\x01" + cut_text(b"", 1 << 21)[:8],  # clipboard text over the limit
    b"\x01" + bytes([248, 0, 0, 0, 0, 0, 0, 0, 65]),  # a fence payload over 64 bytes
])
def test_unknown_or_malformed_messages_end_the_view(stream: bytes) -> None:
    f = ClientFilter(read_only=True)
    with pytest.raises(RfbProtocolError):
        f.feed(stream)
    with pytest.raises(RfbProtocolError):  # final
        f.feed(FRAMEBUFFER_UPDATE_REQUEST)


def test_the_clerks_console_forwards_everything_with_clientinit_shared() -> None:
    f = ClientFilter(read_only=False)
    assert f.feed(b"\x00" + SET_PIXEL_FORMAT) == (b"\x01" + SET_PIXEL_FORMAT, False)
    assert f.feed(key_event()) == (key_event(), True)
    assert f.feed(pointer_event() + FRAMEBUFFER_UPDATE_REQUEST) == (
        pointer_event() + FRAMEBUFFER_UPDATE_REQUEST, True)
    assert f.feed(cut_text(b"hi")) == (cut_text(b"hi"), False)
    g = ClientFilter(read_only=False)
    assert g.feed(b"") == (b"", False)  # ClientInit still to come
    assert g.feed(b"\x00") == (b"\x01", False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 100)), max_size=25),
       st.lists(st.integers(0, 1 << 16), max_size=12), st.integers(0, 1))
def test_any_mix_cut_anywhere_forwards_exactly_the_display_requests(
        picks: list[tuple[bool, int]], points: list[int], shared: int) -> None:
    messages = [(display, (DISPLAY if display else INPUT)[i % len(DISPLAY if display else
                                                                   INPUT)])
                for display, i in picks]
    stream = bytes([shared]) + b"".join(m for _, m in messages)
    f = ClientFilter(read_only=True)
    forwarded = run(f, cut(stream, points))
    assert forwarded == b"\x01" + b"".join(viewed(m) for display, m in messages if display)
    assert f.dropped == sum(1 for display, _ in messages if not display)
    clerk = ClientFilter(read_only=False)
    assert run(clerk, cut(stream, points)) == b"\x01" + stream[1:]
