"""Fixtures shared by the whole suite (tests/web and tests/e2e add their own on top).

Fast, no real parts:
  `db_url`       a fresh SQLite file in tmp_path, migrated to the newest schema
  `db`           a sessionmaker on it (WAL engine from vdi.db.make_engine)
  `clock`        a ManualClock (aware UTC) to inject wherever code takes `clock=`

Real parts (session-scoped, shared; they FAIL with the reason when the part cannot start):
  `guest_image`    the built BIOS guest disk (var/guest/bios.qcow2; built if missing) as
                   an ImageDisk, checked as an import checks a file
  `uefi_guest_image` the same guest on a GPT disk booting through UEFI
  `domain_names`   unique names `vdit-<session>-<label>-<n>` for anything created on the
                   real host; everything carrying this session's prefix is removed at the
                   end of the session (domains, volumes, their logs), nothing else
  `libvirt_host`   pools.libvirt.host.LibvirtHost on qemu:///system, storage pool
                   `vdi-test`, domain type `qemu` (TCG: KVM guests hang on these machines)
  `libvirt_image`  the guest image published to `libvirt_host` (ImageFiles), version 1

Never touches the demo (`vdi-demo-*`, pool `vdi`).
"""

from __future__ import annotations

import itertools
import secrets
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from harness.guest import GuestBuildFailed, guest_disk
from harness.pg_server import PgServer
from pools.hypervisor import HostUnavailable, ImageDisk, ImageFiles
from pools.libvirt.host import LibvirtHost
from vdi.db import make_engine, migrate, session_factory
from vdi.domain import Firmware

REPO = Path(__file__).resolve().parent.parent
LIBVIRT_URI = "qemu:///system"
TEST_STORAGE_POOL = "vdi-test"
TEST_STORAGE_DIR = Path("/var/lib/libvirt/images/vdi-test")
LIBVIRT_LOG_DIR = Path("/var/log/libvirt/qemu")
TEST_NAME_PREFIX = "vdit-"
GUEST_IMAGE_DIR = REPO / "var" / "guest"


# --- database and clock ------------------------------------------------------------------


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """URL of a fresh SQLite file, migrated with vdi.db.migrate (Alembic head)."""
    url = f"sqlite:///{tmp_path / 'vdi.sqlite3'}"
    migrate(url)
    return url


@pytest.fixture
def db(db_url: str) -> Iterator[sessionmaker[Session]]:
    """A sessionmaker on the migrated test database (WAL, busy timeout, BEGIN IMMEDIATE)."""
    engine = make_engine(db_url)
    yield session_factory(engine)
    engine.dispose()


class ManualClock:
    """A clock tests move by hand. Call it for the time (aware UTC), like vdi.domain.utc_now."""

    def __init__(self, start: datetime = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    """One throwaway PostgreSQL server for the module, migrated to the newest schema; a
    test that cannot have it fails with the start script's output."""
    with PgServer() as server:
        migrate(server.url)
        yield server


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


# --- real parts ------------------------------------------------------------------------


def _run(cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(cmd, 255, "", f"{cmd[0]}: {e}")


def _virsh(*args: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return _run(["virsh", "-q", "-c", LIBVIRT_URI, *args], timeout_s)


def _guest(firmware: Firmware) -> ImageDisk:
    try:
        return guest_disk(firmware, GUEST_IMAGE_DIR)
    except GuestBuildFailed as e:
        pytest.fail(f"guest image could not be built: {e}")


@pytest.fixture(scope="session")
def guest_image() -> ImageDisk:
    """The built BIOS guest disk. The builder is idempotent: it returns at once when the
    image is there, else builds it."""
    return _guest(Firmware.BIOS)


@pytest.fixture(scope="session")
def uefi_guest_image() -> ImageDisk:
    return _guest(Firmware.UEFI)


class DomainNames:
    """Unique names for what a test creates on the real host, all starting with `prefix`
    (`vdit-<6 hex of this session>-`), so the session cleans up exactly its own."""

    def __init__(self) -> None:
        self.prefix = f"{TEST_NAME_PREFIX}{secrets.token_hex(3)}-"
        self._counter = itertools.count(1)

    def new(self, label: str = "d") -> str:
        return f"{self.prefix}{label}-{next(self._counter)}"


@pytest.fixture(scope="session")
def domain_names() -> DomainNames:
    return DomainNames()


def remove_test_objects(prefix: str) -> list[str]:
    """Destroy and undefine every domain, delete every volume of the test storage pool and
    every libvirt log whose name starts with `prefix`. Returns what failed (empty: clean)."""
    assert prefix.startswith(TEST_NAME_PREFIX) and len(prefix) > len(TEST_NAME_PREFIX)
    problems: list[str] = []
    listed = _virsh("list", "--all", "--name")
    if listed.returncode != 0:
        return [f"virsh list: {listed.stderr.strip()}"]
    for name in listed.stdout.split():
        if name.startswith(prefix):
            _virsh("destroy", name)  # fails harmlessly when it is not running
            undefined = _virsh("undefine", "--nvram", name)
            if undefined.returncode != 0 and "not found" not in undefined.stderr:
                problems.append(f"undefine {name}: {undefined.stderr.strip()}")
    if _virsh("pool-info", TEST_STORAGE_POOL).returncode == 0:
        _virsh("pool-refresh", TEST_STORAGE_POOL)
        vols = _virsh("vol-list", "--pool", TEST_STORAGE_POOL)
        for line in vols.stdout.splitlines():
            vol = line.split()[0] if line.split() else ""
            if vol.startswith(prefix):
                deleted = _virsh("vol-delete", "--pool", TEST_STORAGE_POOL, vol)
                if deleted.returncode != 0:
                    problems.append(f"vol-delete {vol}: {deleted.stderr.strip()}")
    for log_file in LIBVIRT_LOG_DIR.glob(f"{prefix}*"):
        log_file.unlink(missing_ok=True)
    return problems


def _libvirtd_answers() -> subprocess.CompletedProcess[str]:
    return _virsh("version", timeout_s=15)


@pytest.fixture(scope="session")
def libvirt_host(domain_names: DomainNames) -> Iterator[LibvirtHost]:
    """The real libvirt host (qemu:///system, TCG guests, storage pool `vdi-test`).

    If libvirtd does not answer, deploy/bootstrap.sh runs once; if it still does not,
    every test using this fixture fails with both outputs. At the end of the session
    every `domain_names.prefix` domain and volume is removed; leftovers fail the
    session teardown with what could not be removed.
    """
    check = _libvirtd_answers()
    if check.returncode != 0:
        boot = _run([str(REPO / "deploy" / "bootstrap.sh")], timeout_s=900)
        check = _libvirtd_answers()
        if check.returncode != 0:
            pytest.fail(f"libvirtd at {LIBVIRT_URI} is not reachable: {check.stderr.strip()}\n"
                        f"deploy/bootstrap.sh exited {boot.returncode}:\n"
                        f"{boot.stdout}{boot.stderr}")
    host = LibvirtHost(LIBVIRT_URI, storage_pool=TEST_STORAGE_POOL,
                       storage_dir=TEST_STORAGE_DIR, domain_type="qemu",
                       log_dir=LIBVIRT_LOG_DIR)
    try:
        host.list_desktops()
    except HostUnavailable as e:
        pytest.fail(f"LibvirtHost cannot use {LIBVIRT_URI}: {e}")
    yield host
    host.close()
    problems = remove_test_objects(domain_names.prefix)
    if problems:
        pytest.fail("test domains/volumes left behind:\n" + "\n".join(problems))


@pytest.fixture(scope="session")
def libvirt_image(libvirt_host: LibvirtHost, guest_image: ImageDisk,
                  domain_names: DomainNames) -> ImageFiles:
    """The guest image published on the real host as `<prefix>img` version 1."""
    return libvirt_host.publish_image(f"{domain_names.prefix}img", 1, guest_image)


def wait_for_serial(path: Path, marker: bytes, bound_s: float = 90.0, context: str = "",
                    interval_s: float = 0.1) -> bytes:
    """A guest's serial log once it holds `marker`; fails with the log's tail (and
    `context`) after bound_s."""
    deadline = time.monotonic() + bound_s
    while True:
        data = path.read_bytes() if path.exists() else b""
        if marker in data:
            return data
        if time.monotonic() > deadline:
            pytest.fail(f"{marker!r} not in {path} after {bound_s:.0f} s; "
                        f"log ends with: {data[-800:]!r}\n{context}")
        time.sleep(interval_s)
