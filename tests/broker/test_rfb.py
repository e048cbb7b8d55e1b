"""Tests for the sans-I/O RFB core (broker.rfb)."""

from __future__ import annotations

import struct
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from broker.rfb import (
    CLIENT_INIT_TYPE,
    MAX_REASON_LENGTH,
    BrowserHandshake,
    ClientMessage,
    ClientStreamParser,
    InputKind,
    RfbAuthFailed,
    RfbProtocolError,
    ServerHandshake,
    vnc_auth_response,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cr3t!X"
CHALLENGE = bytes(range(0xA0, 0xB0))
V33, V37, V38 = b"RFB 003.003\n", b"RFB 003.007\n", b"RFB 003.008\n"


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def reason(text: bytes) -> bytes:
    return u32(len(text)) + text


# --- an independent VNC-auth oracle ----------------------------------------------------------


def mirror_bits(byte: int) -> int:
    """Bit-reverse one byte, by shifting (the module uses a string-based table)."""
    out = 0
    for _ in range(8):
        out = (out << 1) | (byte & 1)
        byte >>= 1
    return out


def expected_vnc_response(password: bytes, challenge: bytes) -> bytes:
    key = bytes(mirror_bits(b) for b in (password + b"\x00" * 8)[:8])
    encryptor = Cipher(TripleDES(key + key + key), modes.ECB()).encryptor()  # noqa: S305
    return encryptor.update(challenge) + encryptor.finalize()


# --- vnc_auth_response -------------------------------------------------------------------------


def test_vnc_auth_response_matches_textbook_des_vector() -> None:
    # Classic DES vector: key 133457799BBCDFF1, plain 0123456789ABCDEF -> 85E813540F0AB405.
    # The password is that key with each byte's bits mirrored, so VNC's own mirroring
    # turns it back into the textbook key.
    password = bytes([0xC8, 0x2C, 0xEA, 0x9E, 0xD9, 0x3D, 0xFB, 0x8F]).decode("latin-1")
    assert bytes(mirror_bits(b) for b in password.encode("latin-1")).hex() == "133457799bbcdff1"
    challenge = bytes.fromhex("0123456789abcdef") * 2
    assert vnc_auth_response(password, challenge) == bytes.fromhex("85e813540f0ab405") * 2


def test_vnc_auth_response_matches_openssl_vectors() -> None:
    # Computed with `openssl enc -des-ecb -nopad -provider legacy` and a mirrored key.
    assert vnc_auth_response("password", bytes(range(16))) == bytes.fromhex(
        "b866924125c8eebb9debc1db61c538e2"
    )
    assert vnc_auth_response("secret", b"ABCDEFGHIJKLMNOP") == bytes.fromhex(
        "940deb984fd1d1974e42a8279dc40adb"
    )


@pytest.mark.parametrize("password", ["a", "pass", "password", "p\u00e4ssw\u00f6rd", "\u00ff" * 8])
def test_vnc_auth_response_matches_independent_oracle(password: str) -> None:
    expected = expected_vnc_response(password.encode("latin-1"), CHALLENGE)
    assert vnc_auth_response(password, CHALLENGE) == expected


def test_vnc_auth_response_pads_and_truncates_to_eight_bytes() -> None:
    assert vnc_auth_response("pass", CHALLENGE) == vnc_auth_response(
        "pass\x00\x00\x00\x00", CHALLENGE
    )
    assert vnc_auth_response("abcdefghXYZ", CHALLENGE) == vnc_auth_response("abcdefgh", CHALLENGE)
    assert vnc_auth_response("abcdefgh", CHALLENGE) != vnc_auth_response("abcdefgi", CHALLENGE)


def test_vnc_auth_response_rejects_empty_password() -> None:
    with pytest.raises(ValueError, match="empty"):
        vnc_auth_response("", CHALLENGE)


@pytest.mark.parametrize("size", [0, 8, 15, 17, 32])
def test_vnc_auth_response_rejects_wrong_challenge_size(size: int) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        vnc_auth_response(PASSWORD, b"\x01" * size)


def test_vnc_auth_response_rejects_non_latin1_password_without_echoing_it() -> None:
    with pytest.raises(ValueError) as excinfo:
        vnc_auth_response("geheim\u20ac", CHALLENGE)
    assert "geheim" not in str(excinfo.value)
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__


def test_vnc_auth_response_emits_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(vnc_auth_response(PASSWORD, CHALLENGE)) == 16
        handshake = ServerHandshake(PASSWORD)
        handshake.receive(V38 + b"\x01\x02" + CHALLENGE + u32(0))
        assert handshake.done


def test_module_import_and_auth_clean_under_warnings_as_errors() -> None:
    # A fresh interpreter, so import-time deprecation warnings would fire too.
    code = (
        "from broker.rfb import vnc_auth_response;"
        "assert len(vnc_auth_response('pw', bytes(16))) == 16"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- ServerHandshake ----------------------------------------------------------------------------


def feed_bytewise(receive: Callable[[bytes], bytes], data: bytes) -> bytes:
    return b"".join(receive(data[i : i + 1]) for i in range(len(data)))


def server_38_vnc_auth_stream() -> bytes:
    return V38 + b"\x02\x01\x02" + CHALLENGE + u32(0)


def test_server_handshake_38_vnc_auth_one_chunk() -> None:
    handshake = ServerHandshake(PASSWORD)
    sent = handshake.receive(server_38_vnc_auth_stream())
    assert sent == V38 + b"\x02" + vnc_auth_response(PASSWORD, CHALLENGE)
    assert handshake.done
    assert handshake.leftover() == b""


def test_server_handshake_38_vnc_auth_byte_by_byte() -> None:
    handshake = ServerHandshake(PASSWORD)
    stream = server_38_vnc_auth_stream()
    sent: list[bytes] = []
    for i in range(len(stream)):
        assert not handshake.done
        sent.append(handshake.receive(stream[i : i + 1]))
    assert handshake.done
    non_empty = [chunk for chunk in sent if chunk]
    # Each reply goes out as soon as the step that triggers it is complete.
    assert non_empty == [V38, b"\x02", vnc_auth_response(PASSWORD, CHALLENGE)]
    assert sent[11] == V38  # right after the 12th version byte
    assert handshake.leftover() == b""


def test_server_handshake_step_by_step_replies() -> None:
    handshake = ServerHandshake(PASSWORD)
    assert handshake.receive(V38) == V38
    assert handshake.receive(b"\x01\x02") == b"\x02"
    assert handshake.receive(CHALLENGE) == vnc_auth_response(PASSWORD, CHALLENGE)
    assert not handshake.done
    assert handshake.receive(u32(0)) == b""
    assert handshake.done


def test_server_handshake_prefers_vnc_auth_among_several_types() -> None:
    handshake = ServerHandshake(PASSWORD)
    assert handshake.receive(V38 + b"\x04\x10\x13\x01\x02") == V38 + b"\x02"


def test_server_handshake_37_vnc_auth() -> None:
    handshake = ServerHandshake(PASSWORD)
    sent = handshake.receive(V37 + b"\x01\x02" + CHALLENGE + u32(0))
    assert sent == V37 + b"\x02" + vnc_auth_response(PASSWORD, CHALLENGE)
    assert handshake.done


def test_server_handshake_33_vnc_auth() -> None:
    handshake = ServerHandshake(PASSWORD)
    stream = V33 + u32(2) + CHALLENGE + u32(0)
    sent = feed_bytewise(handshake.receive, stream)
    assert sent == V33 + vnc_auth_response(PASSWORD, CHALLENGE)
    assert handshake.done


@pytest.mark.parametrize("version", [b"RFB 003.889\n", b"RFB 003.005\n", b"RFB 003.014\n"])
def test_server_handshake_odd_3x_versions_are_spoken_as_33(version: bytes) -> None:
    handshake = ServerHandshake(PASSWORD)
    assert handshake.receive(version) == V33
    handshake.receive(u32(2) + CHALLENGE + u32(0))
    assert handshake.done


def test_server_handshake_newer_major_version_answered_with_38() -> None:
    handshake = ServerHandshake(PASSWORD)
    assert handshake.receive(b"RFB 004.001\n") == V38


def test_server_handshake_refuses_major_version_below_3() -> None:
    with pytest.raises(RfbProtocolError, match=r"unsupported RFB 2\.0"):
        ServerHandshake(PASSWORD).receive(b"RFB 002.000\n")


def test_server_handshake_38_none_only_server() -> None:
    handshake = ServerHandshake(PASSWORD)
    assert handshake.receive(V38 + b"\x01\x01") == V38 + b"\x01"
    assert not handshake.done  # 3.8 still sends a SecurityResult
    assert handshake.receive(u32(0)) == b""
    assert handshake.done


def test_server_handshake_37_none_only_server_has_no_security_result() -> None:
    handshake = ServerHandshake(PASSWORD)
    assert handshake.receive(V37 + b"\x01\x01") == V37 + b"\x01"
    assert handshake.done


def test_server_handshake_33_none() -> None:
    handshake = ServerHandshake(PASSWORD)
    assert handshake.receive(V33 + u32(1)) == V33
    assert handshake.done


@pytest.mark.parametrize(
    "stream", [V38 + b"\x01\x01", V37 + b"\x01\x01", V33 + u32(1)], ids=["3.8", "3.7", "3.3"]
)
def test_server_handshake_can_refuse_servers_without_password(stream: bytes) -> None:
    with pytest.raises(RfbProtocolError, match="None is not allowed"):
        ServerHandshake(PASSWORD, allow_none=False).receive(stream)


def test_server_handshake_no_supported_security_type() -> None:
    with pytest.raises(RfbProtocolError, match=r"no supported security type.*\[16, 19\]"):
        ServerHandshake(PASSWORD).receive(V38 + b"\x02\x10\x13")


def test_server_handshake_33_unknown_security_type() -> None:
    with pytest.raises(RfbProtocolError, match="unsupported security type"):
        ServerHandshake(PASSWORD).receive(V33 + u32(16))


@pytest.mark.parametrize("version", [V38, V37])
def test_server_handshake_failure_with_reason(version: bytes) -> None:
    handshake = ServerHandshake(PASSWORD)
    stream = version + b"\x00" + reason(b"Too many security failures")
    with pytest.raises(RfbProtocolError, match="Too many security failures") as excinfo:
        feed_bytewise(handshake.receive, stream)
    assert not isinstance(excinfo.value, RfbAuthFailed)


def test_server_handshake_33_failure_with_reason() -> None:
    with pytest.raises(RfbProtocolError, match="go away"):
        ServerHandshake(PASSWORD).receive(V33 + u32(0) + reason(b"go away"))


def test_server_handshake_auth_failed_with_reason_38() -> None:
    handshake = ServerHandshake(PASSWORD)
    stream = V38 + b"\x01\x02" + CHALLENGE + u32(1) + reason(b"Authentication failed")
    with pytest.raises(RfbAuthFailed) as excinfo:
        feed_bytewise(handshake.receive, stream)
    assert excinfo.value.reason == "Authentication failed"
    assert "Authentication failed" in str(excinfo.value)
    assert PASSWORD not in str(excinfo.value)
    assert not handshake.done


@pytest.mark.parametrize("version", [V37, V33])
def test_server_handshake_auth_failed_without_reason_before_38(version: bytes) -> None:
    choice = b"\x01\x02" if version == V37 else u32(2)
    handshake = ServerHandshake(PASSWORD)
    with pytest.raises(RfbAuthFailed) as excinfo:
        handshake.receive(version + choice + CHALLENGE + u32(1))
    assert excinfo.value.reason == ""


def test_server_handshake_auth_failed_reason_is_sanitized() -> None:
    stream = V38 + b"\x01\x02" + CHALLENGE + u32(2) + reason(b"bad\r\nFAKE LOG LINE\x1b[31m\xff")
    with pytest.raises(RfbAuthFailed) as excinfo:
        ServerHandshake(PASSWORD).receive(stream)
    assert excinfo.value.reason.isprintable()
    assert "\n" not in str(excinfo.value) and "\x1b" not in str(excinfo.value)


def test_server_handshake_oversized_reason_rejected_before_it_arrives() -> None:
    handshake = ServerHandshake(PASSWORD)
    # Only the length is sent: the error must not wait for (or buffer) the text.
    with pytest.raises(RfbProtocolError, match="reason"):
        handshake.receive(V38 + b"\x00" + u32(MAX_REASON_LENGTH + 1))


def test_server_handshake_oversized_auth_failure_reason() -> None:
    stream = V38 + b"\x01\x02" + CHALLENGE + u32(1) + u32(0xFFFFFFFF)
    with pytest.raises(RfbProtocolError, match="reason") as excinfo:
        ServerHandshake(PASSWORD).receive(stream)
    assert not isinstance(excinfo.value, RfbAuthFailed)


def test_server_handshake_reason_at_limit_accepted() -> None:
    text = b"x" * MAX_REASON_LENGTH
    with pytest.raises(RfbProtocolError, match="refused the connection"):
        ServerHandshake(PASSWORD).receive(V38 + b"\x00" + reason(text))


@pytest.mark.parametrize(
    "version",
    [
        b"HTTP/1.1 200\n",
        b"RFB 003.008\r",
        b"RFB 003,008\n",
        b"RFB 0x3.008\n",
        b"rfb 003.008\n",
        b"RFB 003.0a8\n",
        b"\x00" * 12,
    ],
)
def test_server_handshake_garbage_version(version: bytes) -> None:
    with pytest.raises(RfbProtocolError, match="malformed RFB version"):
        ServerHandshake(PASSWORD).receive(version)


def test_server_handshake_waits_for_full_version() -> None:
    handshake = ServerHandshake(PASSWORD)
    assert handshake.receive(b"RFB 003.00") == b""
    assert handshake.receive(b"8\n") == V38


def test_server_handshake_leftover_bytes() -> None:
    handshake = ServerHandshake(PASSWORD)
    extra = b"\x00\x00\x04\x00ServerInit..."
    handshake.receive(server_38_vnc_auth_stream() + extra)
    assert handshake.done
    assert handshake.leftover() == extra
    assert handshake.leftover() == extra  # not consumed


def test_server_handshake_leftover_empty_before_done() -> None:
    handshake = ServerHandshake(PASSWORD)
    handshake.receive(V38 + b"\x01")
    assert handshake.leftover() == b""


def test_server_handshake_rejects_empty_password() -> None:
    with pytest.raises(ValueError, match="empty"):
        ServerHandshake("")


def test_server_handshake_repr_hides_password() -> None:
    handshake = ServerHandshake(PASSWORD)
    assert PASSWORD not in repr(handshake)
    assert PASSWORD not in repr(vars(handshake))


def test_server_handshake_errors_are_final() -> None:
    handshake = ServerHandshake(PASSWORD)
    with pytest.raises(RfbProtocolError):
        handshake.receive(b"garbage garbage")
    with pytest.raises(RfbProtocolError, match="already failed"):
        handshake.receive(b"\x02")


def test_server_handshake_receive_after_done_is_a_programming_error() -> None:
    handshake = ServerHandshake(PASSWORD)
    handshake.receive(server_38_vnc_auth_stream())
    with pytest.raises(RuntimeError):
        handshake.receive(b"\x00")


# --- BrowserHandshake ---------------------------------------------------------------------------


def test_browser_handshake_38() -> None:
    handshake = BrowserHandshake()
    assert handshake.start() == V38
    assert handshake.receive(V38) == b"\x01\x01"
    assert not handshake.done
    assert handshake.receive(b"\x01") == u32(0)
    assert handshake.done
    assert handshake.leftover() == b""


def test_browser_handshake_38_byte_by_byte() -> None:
    handshake = BrowserHandshake()
    handshake.start()
    sent = feed_bytewise(handshake.receive, V38 + b"\x01")
    assert sent == b"\x01\x01" + u32(0)
    assert handshake.done


def test_browser_handshake_37_has_no_security_result() -> None:
    handshake = BrowserHandshake()
    handshake.start()
    assert handshake.receive(V37) == b"\x01\x01"
    assert handshake.receive(b"\x01") == b""
    assert handshake.done


@pytest.mark.parametrize("version", [V33, b"RFB 003.889\n", b"RFB 003.005\n"])
def test_browser_handshake_33(version: bytes) -> None:
    handshake = BrowserHandshake()
    handshake.start()
    assert handshake.receive(version) == u32(1)
    assert handshake.done


@pytest.mark.parametrize("chosen", [0, 2, 16, 255])
def test_browser_handshake_wrong_security_type(chosen: int) -> None:
    handshake = BrowserHandshake()
    handshake.start()
    handshake.receive(V38)
    with pytest.raises(RfbProtocolError, match=f"unsupported security type {chosen}"):
        handshake.receive(bytes([chosen]))
    assert not handshake.done
    with pytest.raises(RfbProtocolError, match="already failed"):
        handshake.receive(b"\x01")


@pytest.mark.parametrize(
    "version",
    [
        b"GET / HTTP/1.1\r\n",
        b"RFB 003.008\r",
        b"RFB 03.008\n\n",
        b"\xff" * 12,
        b"RFB 004.000\n",
        b"RFB 003.009\n",
        b"RFB 002.008\n",
    ],
)
def test_browser_handshake_garbage_version(version: bytes) -> None:
    handshake = BrowserHandshake()
    handshake.start()
    with pytest.raises(RfbProtocolError):
        handshake.receive(version)


@pytest.mark.parametrize(
    ("version", "security"), [(V38, b"\x01"), (V37, b"\x01"), (V33, b"")], ids=["3.8", "3.7", "3.3"]
)
def test_browser_handshake_leftover_is_client_init(version: bytes, security: bytes) -> None:
    handshake = BrowserHandshake()
    handshake.start()
    client_init_and_more = b"\x01" + b"\x03\x00\x00\x00\x00\x00\x04\x00\x03\x00"
    handshake.receive(version + security + client_init_and_more)
    assert handshake.done
    assert handshake.leftover() == client_init_and_more


def test_browser_handshake_call_order_enforced() -> None:
    handshake = BrowserHandshake()
    with pytest.raises(RuntimeError):
        handshake.receive(V38)
    handshake.start()
    with pytest.raises(RuntimeError):
        handshake.start()
    handshake.receive(V38 + b"\x01")
    with pytest.raises(RuntimeError):
        handshake.receive(b"\x01")


# --- ClientStreamParser -------------------------------------------------------------------------


def key_event(down: bool = True, keysym: int = 0x61) -> bytes:
    return struct.pack(">BBxxI", 4, int(down), keysym)


def pointer_event(x: int = 10, y: int = 20, mask: int = 0) -> bytes:
    return struct.pack(">BBHH", 5, mask, x, y)


def qemu_extended_key(keysym: int = 0x61, keycode: int = 0x1E) -> bytes:
    return struct.pack(">BBHII", 255, 0, 1, keysym, keycode)


def cut_text(text: bytes, length: int | None = None) -> bytes:
    return struct.pack(">Bxxxi", 6, len(text) if length is None else length) + text


def set_encodings(encodings: Iterable[int]) -> bytes:
    codes = list(encodings)
    return struct.pack(">BxH", 2, len(codes)) + b"".join(struct.pack(">i", e) for e in codes)


def fence(payload: bytes) -> bytes:
    return struct.pack(">BxxxIB", 248, 0x80000003, len(payload)) + payload


def set_desktop_size(screens: int) -> bytes:
    header = struct.pack(">BxHHBx", 251, 1024, 768, screens)
    return header + b"".join(struct.pack(">IHHHHI", i, 0, 0, 1024, 768, 0) for i in range(screens))


SET_PIXEL_FORMAT = bytes([0, 0, 0, 0]) + bytes(16)
FRAMEBUFFER_UPDATE_REQUEST = struct.pack(">BBHHHH", 3, 1, 0, 0, 1024, 768)
ENABLE_CONTINUOUS_UPDATES = struct.pack(">BBHHHH", 150, 1, 0, 0, 1024, 768)
XVP = bytes([250, 0, 1, 2])
QEMU_AUDIO_ENABLE = struct.pack(">BBH", 255, 1, 0)
QEMU_AUDIO_DISABLE = struct.pack(">BBH", 255, 1, 1)
QEMU_AUDIO_SET_FORMAT = struct.pack(">BBHBBI", 255, 1, 2, 3, 2, 44100)


def parse_bytewise(parser: ClientStreamParser, data: bytes) -> list[ClientMessage]:
    out: list[ClientMessage] = []
    for i in range(len(data)):
        out.extend(parser.feed(data[i : i + 1]))
    return out


MESSAGE_CASES = [
    ("SetPixelFormat", SET_PIXEL_FORMAT, ClientMessage(0, 20, None)),
    ("SetEncodings", set_encodings([7, 1, 0, -223, -239]), ClientMessage(2, 24, None)),
    ("SetEncodings-empty", set_encodings([]), ClientMessage(2, 4, None)),
    ("FramebufferUpdateRequest", FRAMEBUFFER_UPDATE_REQUEST, ClientMessage(3, 10, None)),
    ("KeyEvent", key_event(), ClientMessage(4, 8, InputKind.KEY)),
    ("PointerEvent", pointer_event(), ClientMessage(5, 6, InputKind.POINTER)),
    ("ClientCutText", cut_text(b"hello"), ClientMessage(6, 13, None)),
    ("ClientCutText-empty", cut_text(b""), ClientMessage(6, 8, None)),
    ("EnableContinuousUpdates", ENABLE_CONTINUOUS_UPDATES, ClientMessage(150, 10, None)),
    ("ClientFence", fence(b"abc"), ClientMessage(248, 12, None)),
    ("ClientFence-max", fence(b"f" * 64), ClientMessage(248, 73, None)),
    ("xvp", XVP, ClientMessage(250, 4, None)),
    ("SetDesktopSize", set_desktop_size(2), ClientMessage(251, 40, None)),
    ("QemuExtendedKeyEvent", qemu_extended_key(), ClientMessage(255, 12, InputKind.KEY)),
    ("QemuAudioEnable", QEMU_AUDIO_ENABLE, ClientMessage(255, 4, None)),
    ("QemuAudioDisable", QEMU_AUDIO_DISABLE, ClientMessage(255, 4, None)),
    ("QemuAudioSetFormat", QEMU_AUDIO_SET_FORMAT, ClientMessage(255, 10, None)),
]


@pytest.mark.parametrize(
    ("data", "expected"), [case[1:] for case in MESSAGE_CASES], ids=[c[0] for c in MESSAGE_CASES]
)
def test_parser_each_message_type(data: bytes, expected: ClientMessage) -> None:
    assert expected.length == len(data)
    assert ClientStreamParser().feed(data) == [expected]
    assert parse_bytewise(ClientStreamParser(), data) == [expected]


def test_parser_input_classification() -> None:
    stream = key_event() + pointer_event() + qemu_extended_key() + FRAMEBUFFER_UPDATE_REQUEST
    kinds = [m.input for m in ClientStreamParser().feed(stream)]
    assert kinds == [InputKind.KEY, InputKind.POINTER, InputKind.KEY, None]


def test_parser_message_completed_only_by_its_last_byte() -> None:
    parser = ClientStreamParser()
    event = key_event()
    assert parser.feed(event[:7]) == []
    assert parser.feed(event[7:]) == [ClientMessage(4, 8, InputKind.KEY)]


def test_parser_skip_client_init() -> None:
    parser = ClientStreamParser(skip_client_init=True)
    assert parser.feed(b"\x01" + pointer_event()) == [
        ClientMessage(CLIENT_INIT_TYPE, 1, None),
        ClientMessage(5, 6, InputKind.POINTER),
    ]


def test_parser_skip_client_init_alone_and_empty_feed() -> None:
    parser = ClientStreamParser(skip_client_init=True)
    assert parser.feed(b"") == []
    assert parser.feed(b"\x00") == [ClientMessage(CLIENT_INIT_TYPE, 1, None)]
    # The next byte is a real message type again, not another ClientInit.
    assert parser.feed(b"\x05") == []


def test_parser_without_skip_treats_first_byte_as_message_type() -> None:
    with pytest.raises(RfbProtocolError, match="unknown client message type 1"):
        ClientStreamParser().feed(b"\x01")


def test_parser_negative_cut_text_length_is_extended_clipboard() -> None:
    payload = b"\x10\x00\x00\x01" + b"z" * 12  # noVNC extended clipboard caps/notify
    data = cut_text(payload, length=-len(payload))
    assert ClientStreamParser().feed(data) == [ClientMessage(6, 8 + len(payload), None)]
    assert parse_bytewise(ClientStreamParser(), data) == [ClientMessage(6, 24, None)]


def test_parser_cut_text_at_limit_accepted() -> None:
    parser = ClientStreamParser(max_cut_text=100)
    assert parser.feed(cut_text(b"x" * 100)) == [ClientMessage(6, 108, None)]


@pytest.mark.parametrize("length", [101, -101, -(2**31), 2**31 - 1])
def test_parser_oversized_cut_text_rejected_from_header(length: int) -> None:
    parser = ClientStreamParser(max_cut_text=100)
    with pytest.raises(RfbProtocolError, match="ClientCutText"):
        parser.feed(cut_text(b"", length=length))  # header only: no need to wait for data


def test_parser_large_cut_text_is_counted_not_buffered() -> None:
    parser = ClientStreamParser()
    payload = b"q" * 1_000_000
    data = cut_text(payload) + key_event()
    chunk = 65536
    messages: list[ClientMessage] = []
    for i in range(0, len(data), chunk):
        messages.extend(parser.feed(data[i : i + chunk]))
        assert len(parser._header) < 16  # only an incomplete header is ever kept
    assert messages == [
        ClientMessage(6, 8 + len(payload), None),
        ClientMessage(4, 8, InputKind.KEY),
    ]


@pytest.mark.parametrize("message_type", [1, 7, 100, 149, 249, 252, 254])
def test_parser_unknown_type(message_type: int) -> None:
    parser = ClientStreamParser()
    with pytest.raises(RfbProtocolError, match=f"unknown client message type {message_type}"):
        parser.feed(key_event() + bytes([message_type]) + bytes(20))
    with pytest.raises(RfbProtocolError, match="already failed"):
        parser.feed(key_event())


def test_parser_oversized_fence() -> None:
    with pytest.raises(RfbProtocolError, match="ClientFence"):
        ClientStreamParser().feed(fence(b"f" * 65))


def test_parser_too_many_encodings() -> None:
    assert ClientStreamParser().feed(set_encodings(range(1024))) == [ClientMessage(2, 4100, None)]
    with pytest.raises(RfbProtocolError, match="SetEncodings"):
        ClientStreamParser().feed(struct.pack(">BxH", 2, 1025))


def test_parser_unknown_qemu_subtype_and_audio_operation() -> None:
    with pytest.raises(RfbProtocolError, match="subtype 2"):
        ClientStreamParser().feed(bytes([255, 2, 0, 0]))
    with pytest.raises(RfbProtocolError, match="audio operation 3"):
        ClientStreamParser().feed(struct.pack(">BBH", 255, 1, 3))


def test_parser_rejects_negative_limit() -> None:
    with pytest.raises(ValueError):
        ClientStreamParser(max_cut_text=-1)


def build_mixed_stream(rounds: int) -> tuple[bytes, list[ClientMessage]]:
    parts: list[bytes] = [b"\x01", SET_PIXEL_FORMAT, set_encodings([7, 16, -223, -239, -258])]
    expected = [
        ClientMessage(CLIENT_INIT_TYPE, 1, None),
        ClientMessage(0, 20, None),
        ClientMessage(2, 24, None),
    ]
    for i in range(rounds):
        text = bytes([65 + i % 26]) * (i % 300)
        round_parts = [
            (FRAMEBUFFER_UPDATE_REQUEST, ClientMessage(3, 10, None)),
            (pointer_event(i % 1024, i % 768, i % 3), ClientMessage(5, 6, InputKind.POINTER)),
            (key_event(True, 0x61 + i % 26), ClientMessage(4, 8, InputKind.KEY)),
            (key_event(False, 0x61 + i % 26), ClientMessage(4, 8, InputKind.KEY)),
            (qemu_extended_key(), ClientMessage(255, 12, InputKind.KEY)),
            (cut_text(text), ClientMessage(6, 8 + len(text), None)),
            (fence(bytes(i % 65)), ClientMessage(248, 9 + i % 65, None)),
            (set_desktop_size(i % 3), ClientMessage(251, 8 + 16 * (i % 3), None)),
            (ENABLE_CONTINUOUS_UPDATES, ClientMessage(150, 10, None)),
            (QEMU_AUDIO_SET_FORMAT, ClientMessage(255, 10, None)),
            (XVP, ClientMessage(250, 4, None)),
        ]
        for data, message in round_parts:
            parts.append(data)
            expected.append(message)
    return b"".join(parts), expected


def test_parser_long_mixed_stream_any_fragmentation() -> None:
    stream, expected = build_mixed_stream(300)
    assert ClientStreamParser(skip_client_init=True).feed(stream) == expected
    assert parse_bytewise(ClientStreamParser(skip_client_init=True), stream) == expected
    for chunk in (2, 3, 7, 13, 64, 1000, 4096):
        parser = ClientStreamParser(skip_client_init=True)
        messages: list[ClientMessage] = []
        for i in range(0, len(stream), chunk):
            messages.extend(parser.feed(stream[i : i + chunk]))
        assert messages == expected, f"chunk size {chunk}"
    assert sum(m.length for m in expected) == len(stream)


def test_parser_one_message_per_chunk_as_novnc_sends_them() -> None:
    """The fast path for a chunk that is exactly one fixed-size message gives the same
    messages as the general one, wherever such chunks fall in the stream."""
    parts = [b"\x01", SET_PIXEL_FORMAT, key_event(True, 0x61), pointer_event(1, 2, 0),
             cut_text(b"abc"), FRAMEBUFFER_UPDATE_REQUEST, XVP, key_event(False, 0x61)]
    whole = ClientStreamParser(skip_client_init=True).feed(b"".join(parts))
    parser = ClientStreamParser(skip_client_init=True)
    assert [m for part in parts for m in parser.feed(part)] == whole


def test_parser_fixed_size_bytes_inside_a_message_are_not_a_message() -> None:
    """Eight bytes that look like a KeyEvent but finish a ClientCutText are its text."""
    parser = ClientStreamParser()
    assert parser.feed(cut_text(b"x" * 16)[:16]) == []
    assert parser.feed(key_event(True, 0x61)) == [ClientMessage(6, 24, None)]
    # a PointerEvent-sized chunk that ends a KeyEvent and starts a PointerEvent
    assert parser.feed(key_event(True, 0x61)[:5]) == []
    pointer = pointer_event(1, 2, 0)
    assert parser.feed(key_event(True, 0x61)[5:] + pointer[:3]) == [
        ClientMessage(4, 8, InputKind.KEY)]
    assert parser.feed(pointer[3:]) == [ClientMessage(5, 6, InputKind.POINTER)]


def test_parser_accepts_bytearray_and_memoryview_chunks() -> None:
    stream, expected = build_mixed_stream(5)
    parser = ClientStreamParser(skip_client_init=True)
    half = len(stream) // 2
    first = parser.feed(bytearray(stream[:half]))  # type: ignore[arg-type]
    second = parser.feed(memoryview(stream)[half:])  # type: ignore[arg-type]
    assert first + second == expected
