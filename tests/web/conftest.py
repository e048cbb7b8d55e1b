"""The real broker app in a real uvicorn server, for HTTP and websocket tests.

`broker_factory` starts `vdi.wiring.build_app(...)` on a free loopback port in a
background thread (with its lifespan, so the pool worker and input flusher run) against
the real slapd, a SQLite database and state directory in tmp, and stops every server
it started when the test ends. If any real part (slapd, the server, libvirtd) cannot
start, the test fails and says why; nothing here skips.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select as sql_select
from starlette.applications import Starlette

from broker.auth.directory import Directory
from harness.ldap_server import DEMO_PASSWORD, GROUP_BASE, SlapdServer
from harness.relay import LoopbackRelay
from pools.fake_hypervisor import FakeHypervisor
from pools.hypervisor import Hypervisor, ImageDisk, file_digest
from vdi.domain import Desktop, DesktopState, Firmware, ImageTraits, OsFamily, Pool, PoolKind
from vdi.models import AuditRow
from vdi.settings import Settings, load_settings
from vdi.wiring import Role, Runtime, build_app
from web.access import cookie_name

STAFF_GROUP = f"cn=window-staff,{GROUP_BASE}"
HELPDESK_GROUP = f"cn=helpdesk,{GROUP_BASE}"
ADMIN_GROUP = f"cn=vdi-admins,{GROUP_BASE}"
SECURITY_GROUP = f"cn=vdi-security,{GROUP_BASE}"
AUDIT_GROUP = f"cn=vdi-auditors,{GROUP_BASE}"
DOMAIN_PREFIX = "vdit-web-"
START_TIMEOUT_S = 30.0


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str,
             interval_s: float = 0.05) -> None:
    """Poll until `condition()` holds; fail the test naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def window_pool(pool_id: str = "window", *, image: str = "guest", min_ready: int = 1,
                max_size: int = 3, groups: tuple[str, ...] = (STAFF_GROUP,),
                name: str = "窗口桌面") -> Pool:
    return Pool(id=pool_id, display_name=name, kind=PoolKind.FLOATING, image=image, vcpus=1,
                memory_mib=256, min_ready=min_ready, max_size=max_size, entitled_groups=groups)


@dataclass
class SignedIn:
    """A browser that signed in: its client keeps the session cookie."""

    broker: RunningBroker
    client: httpx.Client
    body: dict[str, Any]
    cookie: str

    @property
    def csrf(self) -> str:
        value = self.body["csrf"]
        assert isinstance(value, str)
        return value

    @property
    def cookie_header(self) -> str:
        return f"{cookie_name(self.broker.settings)}={self.cookie}"

    def connect(self, pool_id: str) -> httpx.Response:
        return self.client.post(f"/api/pools/{pool_id}/connect",
                                headers={"X-CSRF-Token": self.csrf})

    def connect_when_ready(self, pool_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
        """Connect, retrying while the pool answers 'desktop_starting'."""
        deadline = time.monotonic() + timeout_s
        while True:
            r = self.connect(pool_id)
            if r.status_code == 200:
                body = r.json()
                assert isinstance(body, dict)
                return body
            if r.status_code != 503 or r.json().get("error") != "desktop_starting":
                pytest.fail(f"connect to {pool_id} failed: {r.status_code} {r.text}")
            if time.monotonic() > deadline:
                pytest.fail(f"no desktop of pool {pool_id} was ready within {timeout_s} s")
            time.sleep(0.1)

    def logout(self) -> httpx.Response:
        return self.client.delete("/api/session", headers={"X-CSRF-Token": self.csrf})


@dataclass
class RunningBroker:
    app: Starlette
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.settings.public_url

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    @property
    def runtime(self) -> Runtime:
        rt: Runtime = self.app.state.runtime
        return rt

    def client(self, *, origin: str | None = "self", **headers: str) -> httpx.Client:
        """An HTTP client; by default it sends this broker's own Origin."""
        all_headers = dict(headers)
        if origin is not None:
            all_headers["Origin"] = self.url if origin == "self" else origin
        c = httpx.Client(base_url=self.url, headers=all_headers, timeout=30.0)
        self.clients.append(c)
        return c

    def login(self, username: str, password: str = DEMO_PASSWORD) -> SignedIn:
        c = self.client()
        r = c.post("/api/session", json={"username": username, "password": password})
        if r.status_code != 200:
            pytest.fail(f"login of {username} failed: {r.status_code} {r.text}")
        cookie = c.cookies.get(cookie_name(self.settings))
        assert cookie, f"login of {username} set no session cookie"
        return SignedIn(self, c, r.json(), cookie)

    # -- records -----------------------------------------------------------------------

    def publish_image(self, host: Hypervisor, image_id: str, image: ImageDisk) -> None:
        self.runtime.images.publish(host, image_id, image)

    def save_pool(self, pool: Pool) -> None:
        self.runtime.catalog.save_pool(pool)

    def desktops(self, pool_id: str | None = None,
                 states: tuple[DesktopState, ...] | None = None) -> list[Desktop]:
        return self.runtime.catalog.desktops(pool_id, states)

    def wait_ready(self, pool_id: str, count: int = 1, timeout_s: float = 30.0) -> None:
        wait_for(lambda: len(self.desktops(pool_id, (DesktopState.READY,))) >= count,
                 timeout_s, f"{count} ready desktop(s) in pool {pool_id}")

    def audit(self, *, action: str | None = None, outcome: str | None = None
              ) -> list[AuditRow]:
        q = sql_select(AuditRow).order_by(AuditRow.id)
        if action is not None:
            q = q.where(AuditRow.action == action)
        if outcome is not None:
            q = q.where(AuditRow.outcome == outcome)
        with self.runtime.db() as s:
            return list(s.scalars(q))

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        self.server.should_exit = True
        self.thread.join(START_TIMEOUT_S)
        if self.thread.is_alive():
            raise RuntimeError(f"the broker at {self.url} did not stop within "
                               f"{START_TIMEOUT_S} s")


def broker_settings(tmp: Path, port: int, slapd_overrides: dict[str, Any],
                    **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        **slapd_overrides,
        "ldap_timeout_s": 1.0,
        "state_dir": tmp,
        "database_url": f"sqlite:///{tmp / 'vdi.sqlite3'}",
        "public_url": f"http://127.0.0.1:{port}",
        "listen_port": port,
        "role_staff_groups": (STAFF_GROUP,),
        "role_helpdesk_groups": (HELPDESK_GROUP,),
        "role_system_admin_groups": (ADMIN_GROUP,),
        "role_security_admin_groups": (SECURITY_GROUP,),
        "role_audit_admin_groups": (AUDIT_GROUP,),
        "domain_prefix": DOMAIN_PREFIX,
        "worker_interval_s": 0.2,
        "input_flush_s": 0.5,
        "libvirt_timeout_s": 10.0,
    }
    values.update(overrides)
    return load_settings(environ={}, **values)


def start_broker(tmp: Path, slapd: SlapdServer, *, hosts: dict[str, Hypervisor] | None,
                 run_worker: bool = True, directory: Directory | None = None,
                 **overrides: Any) -> RunningBroker:
    """Start the app in uvicorn on a free loopback port; returns once it serves."""
    tmp.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    settings = broker_settings(tmp, port, slapd.settings_overrides(), **overrides)
    app = build_app(settings, hosts=hosts, directory=directory,
                    role=Role.BOTH if run_worker else Role.WEB)
    config = uvicorn.Config(app, host="127.0.0.1", port=port,
                            ws_max_size=settings.max_ws_frame_bytes,
                            ws_per_message_deflate=False, proxy_headers=False,
                            lifespan="on", log_level="warning",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"broker-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError("the broker app failed to start (lifespan error?); "
                               "see the captured log above")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the broker did not start within {START_TIMEOUT_S} s")
        time.sleep(0.02)
    return RunningBroker(app=app, settings=settings, server=server, thread=thread)


BrokerFactory = Callable[..., RunningBroker]


def write_fake_image(directory: Path) -> ImageDisk:
    """A guest image for the fake host (which reads only that its file exists)."""
    directory.mkdir(parents=True, exist_ok=True)
    disk = directory / "disk.qcow2"
    disk.write_bytes(b"QFI\xfb" + (3).to_bytes(4, "big") + bytes(16) + (1 << 30).to_bytes(8, "big"))
    return ImageDisk(path=disk, digest=file_digest(disk), disk_bytes=1 << 30,
                     traits=ImageTraits(Firmware.BIOS, OsFamily.LINUX))


@dataclass
class FakeHostBroker:
    broker: RunningBroker
    host: FakeHypervisor


def start_with_fake_host(factory: BrokerFactory, fake_image: ImageDisk, *,
                         pools: tuple[Pool, ...] = (window_pool(),), down: bool = False,
                         **overrides: Any) -> FakeHostBroker:
    """A broker whose only host is a FakeHypervisor with the `guest` image published and
    `pools` saved; with `down`, the host stops answering before any desktop exists."""
    host = FakeHypervisor("fake:///web-tests")
    broker = factory(hosts={host.uri: host}, libvirt_uri=host.uri, **overrides)
    broker.publish_image(host, "guest", fake_image)
    host.down = down
    for pool in pools:
        broker.save_pool(pool)
    return FakeHostBroker(broker, host)


@pytest.fixture(scope="session")
def slapd() -> Iterator[SlapdServer]:
    """The real OpenLDAP server with the demo directory, shared by the session.

    If it cannot start, every test using it fails with the start script's output.
    """
    with SlapdServer() as server:
        yield server


@pytest.fixture
def broker_factory(tmp_path: Path, slapd: SlapdServer) -> Iterator[BrokerFactory]:
    """Call with `hosts=` and settings overrides; every broker stops after the test."""
    started: list[RunningBroker] = []

    def start(*, hosts: dict[str, Hypervisor] | None, run_worker: bool = True,
              directory: Directory | None = None, **overrides: Any) -> RunningBroker:
        broker = start_broker(tmp_path / f"broker{len(started)}", slapd, hosts=hosts,
                              run_worker=run_worker, directory=directory, **overrides)
        started.append(broker)
        return broker

    yield start
    errors = []
    for broker in started:
        try:
            broker.stop()
        except RuntimeError as e:
            errors.append(str(e))
    assert not errors, errors


@pytest.fixture
def fake_image(tmp_path: Path) -> ImageDisk:
    return write_fake_image(tmp_path / "image")


@pytest.fixture
def fake(broker_factory: BrokerFactory, fake_image: ImageDisk) -> FakeHostBroker:
    """The usual broker: fake host, pool `window` (staff) and pool `tools` (helpdesk)."""
    return start_with_fake_host(
        broker_factory, fake_image,
        pools=(window_pool(), window_pool("tools", min_ready=0, groups=(HELPDESK_GROUP,),
                                          name="Helpdesk tools")))


class HangingProxy(LoopbackRelay):
    """A loopback TCP relay to a real server that can be switched to 'hang': from then
    on it accepts new connections and never answers them (the server seems to hang),
    while connections already relayed keep working."""

    scheme = "ldap"

    def __init__(self, backend_port: int) -> None:
        self.hanging = False
        self._held: list[socket.socket] = []
        super().__init__(backend_port, name="hang-proxy")

    @property
    def held(self) -> int:
        """Connections accepted in hang mode (each one a client left waiting)."""
        return len(self._held)

    def admit(self, conn: socket.socket) -> socket.socket | None:
        if self.hanging:
            self._held.append(conn)
            return None
        return conn

    def stop(self) -> None:
        super().stop()
        for conn in self._held:
            conn.close()
