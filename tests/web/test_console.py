"""The websocket console against a real guest on the real libvirtd, over a real uvicorn.

The test client speaks RFB 3.8 the way noVNC does. One guest serves the module: pool
`window` of size 1 (domain prefix `vdit-web-`), destroyed with its disk at the end.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin, Subprotocol

from harness.ldap_server import SlapdServer
from pools.hypervisor import ImageDisk
from pools.libvirt.host import LibvirtHost
from tests.conftest import (
    LIBVIRT_URI,
    TEST_STORAGE_DIR,
    TEST_STORAGE_POOL,
    remove_test_objects,
)
from tests.web.conftest import (
    DOMAIN_PREFIX,
    BrokerFactory,
    RunningBroker,
    SignedIn,
    start_broker,
    start_with_fake_host,
    wait_for,
    window_pool,
)
from vdi.domain import Desktop, DesktopState

pytestmark = pytest.mark.real

IMAGE_ID = f"{DOMAIN_PREFIX}img"
MAX_FRAME = 256 * 1024
MAX_TUNNELS = 2
CLOSE_BOUND_S = 5.0  # a tunnel that should close does so within this, not "eventually"
XK_RETURN = 0xFF0D


# -- a minimal RFB 3.8 client over the websocket ---------------------------------------------


@dataclass(frozen=True)
class ServerInit:
    width: int
    height: int
    bits_per_pixel: int
    name: bytes


class RfbClient:
    """Reads the byte stream out of websocket messages; speaks the client side of RFB."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._buf = bytearray()
        self.init: ServerInit | None = None

    def read(self, n: int, timeout_s: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout_s
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"the console sent {len(self._buf)} of {n} expected bytes")
            data = self.ws.recv(timeout=left)
            assert isinstance(data, bytes), f"the console sent a text frame: {data!r}"
            self._buf += data
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def send(self, data: bytes) -> None:
        self.ws.send(data)

    def security_types(self) -> list[int]:
        assert self.read(12) == b"RFB 003.008\n"
        self.send(b"RFB 003.008\n")
        (count,) = self.read(1)
        return list(self.read(count))

    def handshake(self) -> ServerInit:
        """Version, security None, ClientInit (shared), ServerInit."""
        assert self.security_types() == [1]
        self.send(b"\x01")
        assert self.read(4) == b"\x00\x00\x00\x00"  # SecurityResult OK
        self.send(b"\x01")  # ClientInit, shared
        width, height = struct.unpack(">HH", self.read(4))
        pixel_format = self.read(16)
        (name_length,) = struct.unpack(">I", self.read(4))
        assert name_length < 4096
        self.init = ServerInit(width, height, pixel_format[0], self.read(name_length))
        return self.init

    def request_update(self, incremental: bool = False) -> None:
        assert self.init is not None
        self.send(struct.pack(">BBHHHH", 3, int(incremental), 0, 0,
                              self.init.width, self.init.height))

    def key(self, keysym: int) -> None:
        for down in (1, 0):
            self.send(struct.pack(">BBxxI", 4, down, keysym))

    def next_message(self) -> int:
        """Read one whole server message; returns its type (0 = FramebufferUpdate)."""
        assert self.init is not None
        (kind,) = self.read(1)
        if kind == 0:
            _pad, rects = struct.unpack(">BH", self.read(3))
            for _ in range(rects):
                _x, _y, w, h, encoding = struct.unpack(">HHHHi", self.read(12))
                if encoding == 0:  # raw: the only encoding this client accepts
                    self.read(w * h * self.init.bits_per_pixel // 8)
                else:
                    assert encoding < 0, f"server used encoding {encoding} we never offered"
        elif kind == 1:
            _pad, _first, colours = struct.unpack(">BHH", self.read(5))
            self.read(6 * colours)
        elif kind == 3:
            (length,) = struct.unpack(">3xI", self.read(7))
            assert length < 1 << 20
            self.read(length)
        else:
            assert kind == 2, f"unknown server message type {kind}"
        return kind

    def wait_update(self) -> None:
        """Request the full screen; return once a FramebufferUpdate arrived."""
        self.request_update()
        deadline = time.monotonic() + 10.0
        while self.next_message() != 0:
            assert time.monotonic() < deadline, "no FramebufferUpdate"

    def wait_closed(self, timeout_s: float = CLOSE_BOUND_S) -> int | None:
        """Drain until the broker closes the websocket; returns the close code it sent."""
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"the console was still open after {timeout_s} s")
                self.ws.recv(timeout=left)
        except ConnectionClosed as e:
            return e.rcvd.code if e.rcvd else None
        except TimeoutError:
            pytest.fail(f"the console was still open after {timeout_s} s")


def console_url(broker: RunningBroker, path: str, query: str = "") -> str:
    return broker.ws_url + path + (f"?{query}" if query else "")


def open_ws(broker: RunningBroker, path: str, *, cookie: str | None,
            origin: str | None = "self", query: str = "") -> ClientConnection:
    headers = {"Cookie": cookie} if cookie else {}
    return connect(console_url(broker, path, query),
                   origin=Origin(broker.url if origin == "self" else origin) if origin else None,
                   additional_headers=headers, subprotocols=[Subprotocol("binary")],
                   max_size=None, open_timeout=10, close_timeout=5)


def open_console(me: SignedIn, path: str | None = None, query: str = "") -> RfbClient:
    path = path or me.connect_when_ready("window")["console"]
    ws = open_ws(me.broker, path, cookie=me.cookie_header, query=query)
    assert ws.subprotocol == "binary"
    return RfbClient(ws)


def assert_refused(broker: RunningBroker, path: str, *, cookie: str | None,
                   origin: str | None = "self", reason: str | None) -> None:
    """The upgrade is refused (HTTP 403) and, when `reason` is given, audited as denied."""
    denied_before = len(broker.audit(action="console", outcome="denied"))
    with pytest.raises(InvalidStatus) as refused:
        open_ws(broker, path, cookie=cookie, origin=origin).close()
    assert refused.value.response.status_code == 403
    if reason is not None:
        denied = broker.audit(action="console", outcome="denied")
        assert len(denied) == denied_before + 1
        assert denied[-1].detail == reason


# -- the module's broker and guest ---------------------------------------------------------


@pytest.fixture(scope="module")
def libvirt_broker(tmp_path_factory: pytest.TempPathFactory, slapd: SlapdServer,
                   libvirt_host: LibvirtHost, guest_image: ImageDisk) -> Iterator[RunningBroker]:
    """The broker on the real host, with one ready guest in pool `window` (size 1).
    Everything named `vdit-web-*` (domains, volumes, logs) is removed before and after."""
    leftovers = remove_test_objects(DOMAIN_PREFIX)  # from an earlier run that was killed
    assert not leftovers, leftovers
    broker = start_broker(tmp_path_factory.mktemp("console"), slapd,
                          hosts={LIBVIRT_URI: libvirt_host}, libvirt_uri=LIBVIRT_URI,
                          storage_pool=TEST_STORAGE_POOL, storage_dir=TEST_STORAGE_DIR,
                          domain_type="qemu", max_ws_frame_bytes=MAX_FRAME,
                          max_tunnels_per_user=MAX_TUNNELS, libvirt_timeout_s=30.0)
    try:
        broker.publish_image(libvirt_host, IMAGE_ID, guest_image)
        broker.save_pool(window_pool(image=IMAGE_ID, min_ready=1, max_size=1))
        broker.wait_ready("window", timeout_s=90.0)
        yield broker
    finally:
        broker.stop()
        problems = remove_test_objects(DOMAIN_PREFIX)
        assert not problems, problems


@pytest.fixture(autouse=True)
def no_tunnel_left_open(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "libvirt_broker" in request.fixturenames:
        broker: RunningBroker = request.getfixturevalue("libvirt_broker")
        wait_for(lambda: not broker.runtime.tunnels.open_for(), 10.0,
                 "every console tunnel of the test to be closed")


def my_desktop(broker: RunningBroker, username: str) -> Desktop:
    mine = [d for d in broker.desktops("window", (DesktopState.ASSIGNED,))
            if d.assigned_user == username]
    assert len(mine) == 1, mine
    return mine[0]


# -- a working console -----------------------------------------------------------------------


def test_console_speaks_rfb_with_no_vnc_auth_for_the_browser(
        libvirt_broker: RunningBroker) -> None:
    me = libvirt_broker.login("zhangsan")
    rfb = open_console(me)
    closed = libvirt_broker.audit(action="console", outcome="closed")
    try:
        init = rfb.handshake()
        assert 0 < init.width <= 8192 and 0 < init.height <= 8192
        assert init.bits_per_pixel in (8, 16, 32)
        rfb.wait_update()
    finally:
        rfb.ws.close()
    wait_for(lambda: len(libvirt_broker.audit(action="console", outcome="closed")) > len(closed),
             CLOSE_BOUND_S, "the tunnel's close to be audited")


def test_key_events_count_as_input_and_other_messages_do_not(
        libvirt_broker: RunningBroker) -> None:
    svc = libvirt_broker.runtime
    me = libvirt_broker.login("zhangsan")
    rfb = open_console(me)
    try:
        rfb.handshake()
        desktop = my_desktop(libvirt_broker, "zhangsan")
        rfb.wait_update()  # ClientInit and update requests went through the relay
        svc.signals.flush()
        before = svc.catalog.desktop(desktop.id)
        assert before is not None
        assert before.last_input_at == desktop.last_input_at  # not input

        rfb.key(XK_RETURN)

        def input_recorded() -> bool:
            svc.signals.flush()
            now = svc.catalog.desktop(desktop.id)
            return bool(now and now.last_input_at and (
                before.last_input_at is None or now.last_input_at > before.last_input_at))

        wait_for(input_recorded, CLOSE_BOUND_S, "the key event to be recorded as input")
        rfb.wait_update()  # the tunnel still works after the input
    finally:
        rfb.ws.close()


def test_the_vnc_port_itself_requires_the_vnc_password(libvirt_broker: RunningBroker) -> None:
    libvirt_broker.login("zhangsan").connect_when_ready("window")
    desktop = my_desktop(libvirt_broker, "zhangsan")
    assert desktop.console is not None and desktop.console.host == "127.0.0.1"
    for choice in (1, 2):
        with socket.create_connection((desktop.console.host, desktop.console.port),
                                      timeout=10) as raw:
            f = raw.makefile("rwb")
            assert f.read(12) == b"RFB 003.008\n"
            f.write(b"RFB 003.008\n")
            f.flush()
            count = f.read(1)[0]
            assert list(f.read(count)) == [2], "the VNC server offers more than VNC auth"
            f.write(bytes([choice]))
            f.flush()
            if choice == 2:  # a wrong answer to the challenge is refused
                assert len(f.read(16)) == 16
                f.write(bytes(16))
                f.flush()
            result = f.read(4)
            # refused: a non-zero SecurityResult, or the server hangs up
            assert result != b"\x00\x00\x00\x00", f"security type {choice} got in"


# -- denials ---------------------------------------------------------------------------------


def test_a_token_works_once(libvirt_broker: RunningBroker) -> None:
    me = libvirt_broker.login("zhangsan")
    path = me.connect_when_ready("window")["console"]
    rfb = open_console(me, path)
    try:
        rfb.handshake()
    finally:
        rfb.ws.close()
    assert_refused(libvirt_broker, path, cookie=me.cookie_header, reason="token already used")


def test_an_expired_token_is_refused(broker_factory: BrokerFactory, fake_image: ImageDisk) -> None:
    broker = start_with_fake_host(broker_factory, fake_image, console_token_ttl_s=1).broker
    broker.wait_ready("window")
    me = broker.login("zhangsan")
    body = me.connect_when_ready("window")
    assert body["expires_in"] == 1
    time.sleep(2)
    assert_refused(broker, body["console"], cookie=me.cookie_header, reason="token expired")


def test_foreign_or_missing_origin_is_refused(libvirt_broker: RunningBroker) -> None:
    me = libvirt_broker.login("zhangsan")
    path = me.connect_when_ready("window")["console"]
    for origin in ("http://evil.example", "null", libvirt_broker.url + ".evil.example",
                   libvirt_broker.url.replace("http://", "https://"), None):
        assert_refused(libvirt_broker, path, cookie=me.cookie_header, origin=origin,
                       reason="bad origin")


def test_a_token_with_another_session_is_refused(libvirt_broker: RunningBroker) -> None:
    me = libvirt_broker.login("zhangsan")
    path = me.connect_when_ready("window")["console"]
    other = libvirt_broker.login("sunqi")
    assert_refused(libvirt_broker, path, cookie=other.cookie_header,
                   reason="token bound to another session")
    assert_refused(libvirt_broker, path, cookie=None, reason="token bound to another session")
    # the same user's other session is another session too
    again = libvirt_broker.login("zhangsan")
    assert_refused(libvirt_broker, path, cookie=again.cookie_header,
                   reason="token bound to another session")


def test_malformed_and_unknown_tokens_are_refused(libvirt_broker: RunningBroker) -> None:
    me = libvirt_broker.login("zhangsan")
    cookie = me.cookie_header
    for token in ("x", "A" * 500, "..", "%00", "A" * 42 + "%0A", "A" * 42 + "=",
                  "%2e%2e", "A" * 43 + "%20"):
        assert_refused(libvirt_broker, f"/console/{token}", cookie=cookie,
                       reason="malformed token")
    assert_refused(libvirt_broker, "/console/" + "A" * 43, cookie=cookie, reason="unknown token")
    # these do not even reach the console route (the path has more segments)
    for path in ("/console/../", "/console/", "/console/x/y", "/console/..%2F..%2Fetc%2Fpasswd"):
        assert_refused(libvirt_broker, path, cookie=cookie, reason=None)


def test_target_in_the_query_string_is_ignored(libvirt_broker: RunningBroker) -> None:
    trap = socket.create_server(("127.0.0.1", 0))
    trap.settimeout(0.1)
    trap_port = trap.getsockname()[1]
    me = libvirt_broker.login("zhangsan")
    reference = open_console(me)
    try:
        expected = reference.handshake()
    finally:
        reference.ws.close()
    wait_for(lambda: not libvirt_broker.runtime.tunnels.open_for(), CLOSE_BOUND_S,
             "the first tunnel to close")
    rfb = open_console(me, query=f"host=127.0.0.1&port={trap_port}&token=x&vnc_port=22"
                                 "&target=evil.example:22")
    try:
        assert rfb.handshake() == expected  # the desktop's own VNC server answered
        rfb.wait_update()
    finally:
        rfb.ws.close()
        with pytest.raises(TimeoutError):
            trap.accept()[0].close()  # nobody came to the port given in the query
        trap.close()


def test_logout_closes_a_live_tunnel(libvirt_broker: RunningBroker) -> None:
    me = libvirt_broker.login("zhangsan")
    rfb = open_console(me)
    try:
        rfb.handshake()
        rfb.wait_update()
        assert me.logout().status_code == 200
        rfb.wait_closed()
    finally:
        rfb.ws.close()
    wait_for(lambda: "session ended" in libvirt_broker.audit(
        action="console", outcome="closed")[-1].detail, CLOSE_BOUND_S,
        "the tunnel's close to be audited as the session's end")


def test_a_frame_over_the_cap_closes_the_tunnel(libvirt_broker: RunningBroker) -> None:
    def cut_text(length: int) -> bytes:  # a valid ClientCutText of `length` bytes in all
        return struct.pack(">B3xI", 6, length - 8) + b"a" * (length - 8)

    me = libvirt_broker.login("zhangsan")
    rfb = open_console(me)
    try:
        rfb.handshake()
        half = MAX_FRAME // 2
        rfb.send(cut_text(half - 64) + cut_text(half - 64))  # just under the cap: fine
        rfb.wait_update()
        rfb.send(cut_text(half) + cut_text(half) + cut_text(64))  # valid RFB, too big a frame
        assert rfb.wait_closed() == 1009
    finally:
        rfb.ws.close()


def test_tunnels_over_the_per_user_cap_are_refused(libvirt_broker: RunningBroker) -> None:
    me = libvirt_broker.login("zhangsan")
    consoles: list[RfbClient] = []
    try:
        for _ in range(MAX_TUNNELS):
            consoles.append(open_console(me))
            consoles[-1].handshake()
        path = me.connect_when_ready("window")["console"]
        assert_refused(libvirt_broker, path, cookie=me.cookie_header,
                       reason="too many consoles open")
        for rfb in consoles:
            rfb.wait_update()  # the ones under the cap still work
    finally:
        for rfb in consoles:
            rfb.ws.close()
    wait_for(lambda: not libvirt_broker.runtime.tunnels.open_for(), CLOSE_BOUND_S,
             "the tunnels to close")
    again = open_console(me)  # room again once they closed
    try:
        again.handshake()
    finally:
        again.ws.close()


def test_two_consoles_of_one_desktop_opened_at_once_both_work(
        libvirt_broker: RunningBroker) -> None:
    """Two tabs (or a reconnect racing a slow first attempt): each tunnel sets its own
    VNC password through libvirt; the second must not spoil the first's login."""
    me = libvirt_broker.login("zhangsan")
    paths = [me.connect_when_ready("window")["console"] for _ in range(MAX_TUNNELS)]
    with ThreadPoolExecutor(MAX_TUNNELS) as pool:
        consoles = list(pool.map(lambda p: open_console(me, p), paths))
        try:
            inits = list(pool.map(lambda rfb: rfb.handshake(), consoles))
            assert inits[0] == inits[1]
        finally:
            for rfb in consoles:
                rfb.ws.close()


def test_garbage_after_the_handshake_closes_the_tunnel(libvirt_broker: RunningBroker) -> None:
    me = libvirt_broker.login("zhangsan")
    rfb = open_console(me)
    try:
        rfb.handshake()
        rfb.send(bytes([77]) + b"garbage")
        rfb.wait_closed()
    finally:
        rfb.ws.close()
    wait_for(lambda: "protocol error from browser" in libvirt_broker.audit(
        action="console", outcome="closed")[-1].detail, CLOSE_BOUND_S,
        "the protocol error to be audited")


def test_a_bad_handshake_from_the_browser_closes_the_tunnel(
        libvirt_broker: RunningBroker) -> None:
    """Asking for VNC auth (the browser may only get None) is refused."""
    me = libvirt_broker.login("zhangsan")
    rfb = open_console(me)
    try:
        assert rfb.security_types() == [1]
        rfb.send(b"\x02")
        rfb.wait_closed()
    finally:
        rfb.ws.close()

