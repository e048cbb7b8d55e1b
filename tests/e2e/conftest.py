"""End-to-end fixtures: a real broker process (`vdi serve`) against the real slapd and
libvirtd, and headless Debian Chromium driven by Playwright."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from harness.browser import chromium
from harness.ldap_server import SlapdServer, free_loopback_port
from harness.relay import LoopbackRelay

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
# Brokers run side by side (two checkouts testing at once) each need their own prefix:
# a session removes every domain carrying its prefix.
PREFIX = os.environ.get("VDI_E2E_PREFIX", "vdit-e2e-")
assert PREFIX.startswith("vdit-"), "VDI_E2E_PREFIX must start with vdit-"
STAFF_GROUP = "cn=window-staff,ou=groups,dc=district,dc=example"
HELPDESK_GROUP = "cn=helpdesk,ou=groups,dc=district,dc=example"
ADMIN_GROUP = "cn=vdi-admins,ou=groups,dc=district,dc=example"
SECURITY_GROUP = "cn=vdi-security,ou=groups,dc=district,dc=example"
AUDIT_GROUP = "cn=vdi-auditors,ou=groups,dc=district,dc=example"


class BlipProxy(LoopbackRelay):
    """A TCP relay in front of the broker whose link the test can cut and restore: a
    real network blip for the browser (open connections die, new ones are refused)."""

    def __init__(self, target_port: int) -> None:
        self._up = threading.Event()
        self._up.set()
        super().__init__(target_port, name="blip-proxy")

    def admit(self, conn: socket.socket) -> socket.socket | None:
        if not self._up.is_set():
            conn.close()
            return None
        return conn

    def cut(self) -> None:
        self._up.clear()
        self.drop_all()

    def restore(self) -> None:
        self._up.set()

    def close(self) -> None:
        self.cut()
        self.stop()


@dataclass(frozen=True)
class Broker:
    url: str
    env: dict[str, str]
    log: Path
    proxy: BlipProxy

    @property
    def proxied_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"

    def vdi(self, *args: str) -> str:
        result = subprocess.run([str(REPO / ".venv/bin/vdi"), *args], env=self.env,
                                capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"vdi {' '.join(args)} failed: {result.stderr[-2000:]}")
        return result.stdout

    def desktops(self) -> list[list[str]]:
        return [line.split("\t") for line in self.vdi("desktops").splitlines() if line]


def _broker_env(slapd: SlapdServer, state: Path, port: int, proxy_port: int,
                prefix: str = PREFIX) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VDI_")}
    env.update({f"VDI_{k.upper()}": str(v) for k, v in slapd.settings_overrides().items()})
    env.update({
        "VDI_STATE_DIR": str(state),
        "VDI_LISTEN_PORT": str(port),
        "VDI_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "VDI_ALLOWED_ORIGINS": f"http://127.0.0.1:{proxy_port}",
        "VDI_DOMAIN_PREFIX": prefix,
        "VDI_STORAGE_POOL": "vdi-test",
        "VDI_STORAGE_DIR": "/var/lib/libvirt/images/vdi-test",
        "VDI_DOMAIN_TYPE": os.environ.get("VDI_TEST_DOMAIN_TYPE", "qemu"),
        "VDI_ROLE_STAFF_GROUPS": STAFF_GROUP,
        "VDI_ROLE_HELPDESK_GROUPS": HELPDESK_GROUP,
        "VDI_ROLE_SYSTEM_ADMIN_GROUPS": ADMIN_GROUP,
        "VDI_ROLE_SECURITY_ADMIN_GROUPS": SECURITY_GROUP,
        "VDI_ROLE_AUDIT_ADMIN_GROUPS": AUDIT_GROUP,
        "VDI_WORKER_INTERVAL_S": "1",
    })
    return env


def _destroy_test_domains(prefix: str = PREFIX) -> None:
    from pools.libvirt.host import LibvirtHost

    host = LibvirtHost("qemu:///system", storage_pool="vdi-test",
                       storage_dir=Path("/var/lib/libvirt/images/vdi-test"), domain_type="qemu")
    try:
        for info in host.list_desktops():
            if info.name.startswith(prefix):
                host.destroy_desktop(info.name)
    finally:
        host.close()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    def window_pool(b: Broker) -> None:
        b.vdi("pool-set", "window", "--name", "街道办窗口桌面", "--image", "demo",
              "--min-ready", "1", "--max-size", "3", "--group", STAFF_GROUP)

    with run_broker(tmp_path_factory.mktemp("broker"), PREFIX, setup=window_pool) as b:
        yield b


@contextlib.contextmanager
def run_broker(state: Path, prefix: str, *, env: dict[str, str] | None = None,
               setup: Callable[[Broker], None] | None = None) -> Iterator[Broker]:
    """A `vdi serve` of its own (its slapd, database and domain prefix: brokers with
    different prefixes leave each other's domains alone) with the guest image published
    as `demo`; `setup` makes its pools before it starts. Its domains are removed after."""
    guest = REPO / "var" / "guest"
    subprocess.run([str(REPO / "deploy/guest/build-image.sh"), str(guest)], check=True,
                   capture_output=True)
    port = free_loopback_port()
    proxy = BlipProxy(port)
    with SlapdServer() as slapd:
        b = Broker(url=f"http://127.0.0.1:{port}",
                   env={**_broker_env(slapd, state, port, proxy.port, prefix), **(env or {})},
                   log=state / "broker.log", proxy=proxy)
        b.vdi("migrate")
        b.vdi("image-import", "demo", str(guest / "bios.qcow2"))
        if setup is not None:
            setup(b)
        with b.log.open("w") as log:
            proc = subprocess.Popen([str(REPO / ".venv/bin/vdi"), "serve"], env=b.env,
                                    stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(b, proc)
            yield b
        finally:
            proxy.close()
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
            _destroy_test_domains(prefix)


def _wait_healthy(b: Broker, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited: {b.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(b.url + "/healthz", timeout=2) as r:
                if json.loads(r.read())["status"] == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"broker not healthy after 60 s: {b.log.read_text()[-3000:]}")


def wait_ready_spare(b: Broker, timeout_s: float = 120) -> None:
    """Block until the pool has a ready desktop (a warm spare)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(row[1] == "ready" for row in b.desktops()):
            return
        time.sleep(0.5)
    raise RuntimeError(f"no ready desktop within {timeout_s} s: {b.desktops()}\n"
                       f"{b.log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Module-scoped: Playwright's sync API keeps an event loop running in this thread
    while it is open, and the async tests that follow need the thread free of it."""
    with chromium() as b:
        yield b
