"""The broker's multi-host behaviour on real libvirtd hosts (tests/nshost.py).

The scenarios of test_hosts.py, with two namespace hosts A (vdit-h1, 10.77.0.11) and
B (vdit-h2, 10.77.0.12) instead of FakeHypervisors: real `LibvirtHost` adapters (storage
pool on the shared images folder, serial logs on the shared logs folder, TCG guests),
`HostCalls`, `ImageStore`, `PoolWorker` and a real SQLite database, with a ManualClock.

* placement: a floating pool's spares land on both hosts, each domain runs where the
  database says, its console answers RFB at the recorded address;
* maintenance drain: a running dedicated desktop in use is live-migrated by the worker
  (same guest: a shell variable set before is still there, no second boot);
* host failure: A's libvirtd is killed (its qemu keeps running); the worker marks A down,
  remakes its floating desktops on B, and restarts its dedicated one on B from the same
  disk once QEMU's image lock no longer holds it (the copy still running on A keeps it
  locked: fencing); nothing is deleted on A while it is down; when A answers again the
  reconciler removes its stale copies and leaves the moved desktops alone;
* a host cut off the network (libvirtd and qemu keep running there): calls to it hang
  until the call's deadline or the adapter's keepalive; it is marked down, its floating
  desktop is remade on B, and once its link is back its stale copy is removed;
* `vdi host-drain` as an admin types it, carried out by a worker running on its own
  (its loop and the real clock, as in a broker): the drain's live migration again.

Seen here (reported, not asserted): the failed host's libvirtd, when it comes back,
restores the DAC owner (root:root 0600) of disks that the moved desktops' qemu on the
healthy host still has open; a drain's source does the same after the migration.

In 1.-4. the job runner and host monitor take the ManualClock (leases, backoff, down
detection); libvirt and the guests run in real time, so real state is polled with real
deadlines.
Each test gets fresh hosts (they start in ~0.2 s); the module holds the machine-wide
namespace-host lock. Timings go to test-artifacts/multihost-timings.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import libvirt
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.assignment import Assigner
from pools.calls import HostCalls
from pools.hosts import Host, HostRegistry, HostStatus
from pools.hypervisor import Hypervisor, ImageDisk
from pools.images import ImageStore
from pools.jobs.queue import JobKind, JobState
from pools.libvirt.host import LibvirtHost
from pools.worker import PoolWorker
from tests.conftest import REPO, ManualClock
from tests.nshost import (
    NamespaceHost,
    NamespaceHostError,
    SharedStorage,
    cleanup_leftovers,
    exclusive,
    leftovers,
)
from tests.pools.test_nshost import rfb_hello, type_text, wait_for
from tests.pools.test_worker import clerk, make_pool
from vdi.catalog import Catalog
from vdi.cli import main as vdi_main
from vdi.domain import ConsoleEndpoint, Desktop, DesktopState, Pool, PoolKind
from vdi.models import DesktopRow, JobRow

pytestmark = pytest.mark.real

PREFIX = "vdit-mh-"  # the worker's domain prefix: every domain these tests make
IMAGE = "vdit-mh-img"
STORAGE_POOL = "vdit-mh"
LOCK_WAIT_S = 300
DOWN_AFTER_S = 10  # clock seconds without an answer before a host is down
STEP_S = 60  # clock seconds between worker rounds: every retry and check is due
BOOT_BOUND_S = 120  # a TCG guest boots in ~2-5 s; the machine may be loaded
ROUND_BOUND = 12  # worker rounds to wait for an outcome before failing
TIMINGS: dict[str, Any] = {}
ARTIFACT = REPO / "test-artifacts" / "multihost-timings.json"
RFB = b"RFB 003.008\n"


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared() -> Iterator[SharedStorage]:
    """The namespace-host lock for the module's run, a clean slate, the shared folders."""
    with exclusive(timeout_s=LOCK_WAIT_S):
        TIMINGS.clear()
        TIMINGS["leftovers_of_earlier_runs"] = cleanup_leftovers()
        yield SharedStorage().create()
        cleanup_leftovers()  # the bridge and the shared folder
        left = leftovers()
        ARTIFACT.parent.mkdir(exist_ok=True)
        ARTIFACT.write_text(json.dumps(TIMINGS, indent=2) + "\n")
        if left:
            pytest.fail("namespace hosts left things behind:\n" + "\n".join(left))


@pytest.fixture
def hosts(shared: SharedStorage) -> Iterator[tuple[NamespaceHost, NamespaceHost]]:
    """Fresh hosts A and B for one test; afterwards they are stopped (every domain and
    qemu with them) and the test's disks and serial logs removed from the shared folder
    (the published image's volumes stay for the next test)."""
    a, b = NamespaceHost(1), NamespaceHost(2)
    try:
        for h in (a, b):
            h.start()
    except NamespaceHostError as e:
        _stop([a, b], shared)
        pytest.fail(f"a namespace host could not start: {e}")
    yield a, b
    problems = _stop([a, b], shared)
    if problems:
        pytest.fail("namespace hosts could not be stopped:\n" + "\n".join(problems))


def _stop(hosts: list[NamespaceHost], shared: SharedStorage) -> list[str]:
    problems = []
    for h in hosts:
        with contextlib.suppress(NamespaceHostError):
            h.restore_network()  # a test that cut it failed half-way
        try:
            h.stop()
        except NamespaceHostError as e:
            problems.append(str(e))
    for f in shared.images.glob(f"{PREFIX}*.qcow2"):
        if not f.name.startswith(IMAGE):
            f.unlink(missing_ok=True)
    for f in shared.logs.iterdir():
        f.unlink(missing_ok=True)
    return problems


class Rig:
    """The broker's pool machinery on hosts A and B, one database, one ManualClock."""

    def __init__(self, db: sessionmaker[Session], hosts: tuple[NamespaceHost, NamespaceHost],
                 shared: SharedStorage, guest_image: ImageDisk) -> None:
        self.db = db
        self.a, self.b = hosts
        self.shared = shared
        self.adapters = {h.uri: LibvirtHost(
            h.uri, storage_pool=STORAGE_POOL, storage_dir=shared.images, domain_type="qemu",
            graphics_listen=h.address, log_dir=shared.logs) for h in hosts}
        adapters: dict[str, Hypervisor] = dict(self.adapters)
        self.calls = HostCalls(adapters, timeout_s=30)
        self.images = ImageStore(db)
        for adapter in self.adapters.values():
            self.images.publish(adapter, IMAGE, guest_image)
        self.catalog = Catalog(db)
        self.clock = ManualClock()
        self.assigner = Assigner(db, clock=self.clock)
        self.registry = HostRegistry(db, self.clock)
        self.worker = PoolWorker(db, self.calls, self.images, domain_prefix=PREFIX,
                                 interval_s=1.0, clock=self.clock, job_lease_s=30,
                                 host_check_interval_s=5, down_after_s=DOWN_AFTER_S,
                                 reconcile_every_s=60)

    def close(self) -> None:
        self.calls.close()
        for adapter in self.adapters.values():
            adapter.close()

    def register(self, *, shared_storage: bool) -> None:
        for h in (self.a, self.b):
            self.registry.add(Host(uri=h.uri, name=f"h{h.index}", graphics_listen=h.address,
                                   storage_pool=STORAGE_POOL,
                                   storage_dir=str(self.shared.images),
                                   log_dir=str(self.shared.logs),
                                   shared_storage=shared_storage))

    def host(self, uri: str) -> NamespaceHost:
        return {self.a.uri: self.a, self.b.uri: self.b}[uri]

    def other(self, h: NamespaceHost) -> NamespaceHost:
        return self.b if h is self.a else self.a

    async def settle(self, rounds: int = 1, step_s: float = STEP_S) -> None:
        for _ in range(rounds):
            await self.worker.tick()
            await self.worker.drain()
            self.clock.advance(step_s)

    async def until(self, what: str, done: Callable[[], bool], rounds: int = ROUND_BOUND,
                    bound_s: float = 240, pause_s: float = 0) -> float:
        """Worker rounds until done(); the real seconds it took. Fails with the state.
        pause_s: real seconds between rounds, for outcomes that wait on real time (a call
        to a host that still hangs makes HostCalls refuse the next ones at once)."""
        t0 = time.monotonic()
        for _ in range(rounds):
            if done():
                return time.monotonic() - t0
            if time.monotonic() - t0 > bound_s:
                break
            await self.settle()
            if pause_s:
                await asyncio.sleep(pause_s)
        if done():
            return time.monotonic() - t0
        pytest.fail(f"{what}: not after {rounds} worker rounds "
                    f"({time.monotonic() - t0:.0f} s)\n{self.state()}")

    def live(self, pool_id: str) -> list[Desktop]:
        return [d for d in self.catalog.desktops(pool_id) if d.state is not DesktopState.DELETED]

    def state(self) -> str:
        """Hosts, desktops and jobs as the database has them (for failure messages)."""
        lines = [f"host {h.name}: {h.status} maintenance={h.maintenance} error={h.error}"
                 for h in self.registry.hosts()]
        with self.db() as s:
            lines += [f"desktop {r.id} {r.state} on {r.host_uri} user={r.assigned_user} "
                      f"console={r.console_host}:{r.console_port} error={r.error}"
                      for r in s.scalars(select(DesktopRow).order_by(DesktopRow.id))]
            lines += [f"job {j.id} {j.kind} {j.desktop_id} {j.state} step={j.step} "
                      f"attempts={j.attempts} error={j.error}"
                      for j in s.scalars(select(JobRow).order_by(JobRow.id))]
        return "\n".join(lines)

    def jobs(self, desktop_id: str) -> list[JobRow]:
        with self.db() as s:
            rows = list(s.scalars(select(JobRow).where(JobRow.desktop_id == desktop_id)
                                  .order_by(JobRow.id)))
            s.expunge_all()
            return rows

    def error(self, desktop_id: str) -> str | None:
        with self.db() as s:
            row = s.get(DesktopRow, desktop_id)
            return row.error if row else None

    def serial(self, d: Desktop) -> Path:
        return self.shared.logs / f"{d.domain_name}.serial.log"

    def disk(self, d: Desktop) -> Path:
        return self.shared.images / f"{d.domain_name}.qcow2"


@pytest.fixture
def rig(db: sessionmaker[Session], hosts: tuple[NamespaceHost, NamespaceHost],
        shared: SharedStorage, guest_image: ImageDisk) -> Iterator[Rig]:
    r = Rig(db, hosts, shared, guest_image)
    yield r
    r.close()


def floating(pool_id: str = "window", **changes: Any) -> Pool:
    return replace(make_pool(pool_id=pool_id, image=IMAGE), **changes)


def dedicated(pool_id: str = "own", **changes: Any) -> Pool:
    return replace(make_pool(pool_id=pool_id, image=IMAGE), kind=PoolKind.DEDICATED,
                   **changes)


# --- real state ------------------------------------------------------------------------


@contextmanager
def connect(h: NamespaceHost) -> Iterator[Any]:
    try:
        conn = libvirt.open(h.uri)
    except libvirt.libvirtError as e:
        pytest.fail(f"{h.name} does not answer at {h.uri}: {e}")
    try:
        yield conn
    finally:
        conn.close()


def domains(h: NamespaceHost) -> dict[str, bool]:
    """Our domains on the host: name -> running."""
    with connect(h) as conn:
        return {d.name(): bool(d.isActive()) for d in conn.listAllDomains(0)
                if d.name().startswith(PREFIX)}


def qemu_pids(h: NamespaceHost, name: str | None = None) -> list[int]:
    """The host's qemu processes (of one domain)."""
    out = []
    for pid in h.pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "qemu-system" in cmd and (name is None or f"guest={name}," in cmd):
            out.append(pid)
    return out


def type_until(h: NamespaceHost, name: str, text: str, serial: Path, marker: bytes) -> bytes:
    """Type `text` on the guest's console until `marker` shows in its serial log (the
    shell may not read yet right after VDI-READY on a loaded machine)."""
    for attempt in range(3):
        with connect(h) as conn:
            type_text(conn.lookupByName(name), text)
        deadline = time.monotonic() + 20 * (attempt + 1)
        while time.monotonic() < deadline:
            data = serial.read_bytes() if serial.exists() else b""
            if marker in data:
                return data
            time.sleep(0.2)
    return wait_for(serial, marker, f"typing on {h.name} did not reach the shell\n"
                    f"{h.qemu_log(name)}", bound_s=1)


def poll(done: Callable[[], bool], bound_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + bound_s
    while not done():
        if time.monotonic() > deadline:
            tail = log.read_bytes()[-600:] if log and log.exists() else b""
            pytest.fail(f"{what} after {bound_s:.0f} s {tail!r}")
        time.sleep(0.1)


def console_greets(console: ConsoleEndpoint | None) -> None:
    assert console is not None, "no console recorded"
    greeting, _ = rfb_hello(console.host, console.port)
    assert greeting == RFB, (console, greeting)


def owner(path: Path) -> str:
    try:
        st = path.stat()
    except OSError as e:
        return f"({e.strerror})"
    refs = {k: os.getxattr(path, k).decode(errors="replace") for k in os.listxattr(path)
            if k.startswith("trusted.libvirt.security.ref")}
    return f"{st.st_uid}:{st.st_gid} {oct(st.st_mode & 0o777)} {refs or ''}".strip()


# --- 1. placement ------------------------------------------------------------------------


async def test_floating_spares_are_placed_on_both_hosts(rig: Rig) -> None:
    rig.catalog.save_pool(floating(min_ready=4, max_size=4))
    t0 = time.monotonic()
    await rig.settle(2)  # the worker registers both hosts, asks them, places 4 desktops
    desktops = rig.live("window")
    TIMINGS["placement_4_desktops_s"] = round(time.monotonic() - t0, 2)
    assert {h.uri: h.status for h in rig.registry.hosts()} == {
        rig.a.uri: HostStatus.UP, rig.b.uri: HostStatus.UP}, rig.state()
    assert len(desktops) == 4 and all(d.state is DesktopState.READY for d in desktops), \
        rig.state()
    assert sorted(d.host_uri for d in desktops) == sorted([rig.a.uri] * 2 + [rig.b.uri] * 2)
    running = {h.uri: domains(h) for h in (rig.a, rig.b)}
    for d in desktops:
        home = rig.host(d.host_uri)
        assert running[home.uri].get(d.domain_name) is True, (d, running)
        assert d.domain_name not in running[rig.other(home).uri], (d, running)
        assert d.console is not None and d.console.host == home.address
        console_greets(d.console)
    assert len(running[rig.a.uri]) == len(running[rig.b.uri]) == 2


# --- 2. maintenance drain with a live migration -------------------------------------------


async def test_drain_live_migrates_a_running_dedicated_desktop(rig: Rig) -> None:
    rig.register(shared_storage=True)
    rig.catalog.save_pool(dedicated(min_ready=1, max_size=2))
    await rig.settle(2)
    [spare] = rig.live("own")
    mine = rig.assigner.assign("own", clerk(1))
    assert mine.id == spare.id and mine.state is DesktopState.ASSIGNED
    await rig.settle(1)  # a new spare (on the other host: it has more room)
    src = rig.host(mine.host_uri)
    dst = rig.other(src)
    serial = rig.serial(mine)
    t0 = time.monotonic()
    wait_for(serial, b"VDI-READY", f"{src.qemu_log(mine.domain_name)}", bound_s=BOOT_BOUND_S)
    TIMINGS["drain_guest_boot_to_ready_s"] = round(time.monotonic() - t0, 2)
    token = secrets.token_hex(4)
    type_until(src, mine.domain_name, f"m={token}\necho a$m >/dev/ttyS0\n", serial,
               f"a{token}".encode())
    disk_inode = rig.disk(mine).stat().st_ino

    t0 = time.monotonic()
    moves = await rig.worker.monitor.drain(src.uri)
    assert moves.migrated >= 1, moves

    def migrated() -> bool:
        return any(j.kind == JobKind.MIGRATE.value and j.state in (
            JobState.DONE.value, JobState.FAILED.value) for j in rig.jobs(mine.id))

    await rig.until("the MIGRATE job ends", migrated, rounds=4)
    TIMINGS["drain_migration_job_s"] = round(time.monotonic() - t0, 2)
    [job] = [j for j in rig.jobs(mine.id) if j.kind == JobKind.MIGRATE.value]
    assert job.state == JobState.DONE.value, (
        f"{job.error}\n{rig.state()}\nsrc: {src.qemu_log(mine.domain_name)}\n"
        f"dst: {dst.qemu_log(mine.domain_name)}")

    moved = rig.catalog.desktop(mine.id)
    assert moved is not None and moved.host_uri == dst.uri, rig.state()
    assert moved.state is DesktopState.ASSIGNED and moved.assigned_user == "clerk1"
    assert rig.assigner.assign("own", clerk(1)).id == mine.id  # still the clerk's
    assert moved.console is not None and moved.console.host == dst.address
    console_greets(moved.console)
    assert domains(dst).get(mine.domain_name) is True
    assert mine.domain_name not in domains(src)
    assert qemu_pids(src, mine.domain_name) == []
    assert rig.disk(mine).stat().st_ino == disk_inode
    # the same running guest: the variable set before the move is still in its shell
    log = type_until(dst, mine.domain_name, "echo b$m >/dev/ttyS0\n", serial,
                     f"b{token}".encode())
    assert log.count(b"VDI-READY") == 1  # no second boot
    assert rig.registry.host(src.uri).maintenance  # type: ignore[union-attr]
    assert not [d for d in rig.live("own") if d.host_uri == src.uri], rig.state()
    TIMINGS["drain_owner_of_disk_after"] = owner(rig.disk(mine))


# --- 3. host failure ------------------------------------------------------------------------


async def test_failed_host_desktops_come_back_on_the_healthy_host(rig: Rig) -> None:
    rig.register(shared_storage=True)
    rig.catalog.save_pool(dedicated(min_ready=2, max_size=2))
    rig.catalog.save_pool(floating(min_ready=2, max_size=3))
    await rig.settle(2)
    assert sorted(d.host_uri for p in ("own", "window") for d in rig.live(p)) == sorted(
        [rig.a.uri] * 2 + [rig.b.uri] * 2), rig.state()  # one of each pool on each host
    mine = rig.assigner.assign("own", clerk(2))
    victim = rig.host(mine.host_uri)
    healthy = rig.other(victim)
    on_victim = {d.id: d for p in ("own", "window") for d in rig.live(p)
                 if d.host_uri == victim.uri}
    assert {d.pool_id for d in on_victim.values()} == {"own", "window"}, rig.state()
    disks = {d.id: rig.disk(d).stat().st_ino for d in on_victim.values()}

    # the clerk leaves something on the dedicated desktop's disk
    serial = rig.serial(mine)
    wait_for(serial, b"VDI-READY", victim.qemu_log(mine.domain_name), bound_s=BOOT_BOUND_S)
    token = secrets.token_hex(4)
    type_until(victim, mine.domain_name,
               f"echo d{token} >/desk/token && sync && echo w{token} >/dev/ttyS0\n", serial,
               f"w{token}".encode())

    # A's daemon dies; its qemu processes keep running
    victim_qemu = {d.id: qemu_pids(victim, d.domain_name) for d in on_victim.values()}
    assert all(victim_qemu.values()), victim_qemu
    t_fail = time.monotonic()
    victim.kill_libvirtd()

    def victim_is(status: HostStatus) -> Callable[[], bool]:
        return lambda: rig.registry.host(victim.uri).status is status  # type: ignore[union-attr]

    TIMINGS["failure_detect_s"] = round(
        await rig.until("the victim is marked down", victim_is(HostStatus.DOWN), rounds=3), 2)

    floaters = [d for d in on_victim.values() if d.pool_id == "window"]

    def floaters_back() -> bool:
        now = [rig.catalog.desktop(d.id) for d in floaters]
        return all(n is not None and n.host_uri == healthy.uri
                   and n.state is DesktopState.READY for n in now)

    await rig.until("the floating desktops are remade on the healthy host", floaters_back)
    TIMINGS["failure_floating_back_s"] = round(time.monotonic() - t_fail, 2)
    running = domains(healthy)
    for d in floaters:
        now = rig.catalog.desktop(d.id)
        assert now is not None and now.assigned_user is None
        assert now.console is not None and now.console.host == healthy.address
        assert running.get(d.domain_name) is True, running
        assert rig.disk(d).stat().st_ino != disks[d.id]  # a fresh clone
        console_greets(now.console)

    # the dedicated desktop: the copy still running on the victim holds QEMU's lock on
    # its disk, so it cannot be started a second time on the healthy host
    def restart_tried() -> bool:
        return "lock" in (rig.error(mine.id) or "") or domains(healthy).get(
            mine.domain_name) is True

    await rig.until("a restart of the dedicated desktop is tried", restart_tried)
    TIMINGS["failure_restart_refused_with"] = rig.error(mine.id)
    assert domains(healthy).get(mine.domain_name) is not True, (
        "the dedicated desktop started on the healthy host while its copy still runs on "
        f"the failed one (no image lock): {rig.state()}")
    await rig.settle(3)  # retries keep being refused while the copy lives
    assert domains(healthy).get(mine.domain_name) is not True
    assert "lock" in (rig.error(mine.id) or ""), rig.state()
    TIMINGS["failure_restart_jobs_while_fenced"] = [
        (j.kind, j.state, j.attempts) for j in rig.jobs(mine.id)]

    # nothing was deleted on the failed host: its definitions and qemu processes are there
    for d in on_victim.values():
        assert (victim.dir / "etc" / "qemu" / f"{d.domain_name}.xml").exists(), d
        assert all(pid in victim.pids() for pid in victim_qemu[d.id]), d
    assert rig.disk(mine).stat().st_ino == disks[mine.id]
    now_mine = rig.catalog.desktop(mine.id)
    assert now_mine is not None and now_mine.state is DesktopState.ASSIGNED
    assert now_mine.assigned_user == "clerk2"

    # fence: the failed host's qemu processes die; the restart goes through
    t_fence = time.monotonic()
    for pids in victim_qemu.values():
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    poll(lambda: not qemu_pids(victim), 20, f"qemu of {victim.name} still alive")

    def mine_back() -> bool:
        d = rig.catalog.desktop(mine.id)
        return (d is not None and d.host_uri == healthy.uri and d.console is not None
                and d.console.host == healthy.address
                and domains(healthy).get(mine.domain_name) is True)

    await rig.until("the dedicated desktop runs on the healthy host", mine_back)
    TIMINGS["failure_dedicated_back_after_fence_s"] = round(time.monotonic() - t_fence, 2)
    TIMINGS["failure_dedicated_back_after_failure_s"] = round(time.monotonic() - t_fail, 2)
    back = rig.catalog.desktop(mine.id)
    assert back is not None and back.state is DesktopState.ASSIGNED
    assert back.assigned_user == "clerk2" and rig.error(mine.id) is None
    assert rig.disk(mine).stat().st_ino == disks[mine.id]  # the same disk
    console_greets(back.console)
    # a restart, not a move of the running guest: it boots again, from the same disk
    poll(lambda: serial.read_bytes().count(b"VDI-READY") == 2, BOOT_BOUND_S,
         "no second boot of the dedicated desktop", serial)
    answered = secrets.token_hex(4)
    # one line: the first keystrokes after boot may be lost, and the marker must not
    # come without the file's content (a lost `cat` line must be typed again)
    log = type_until(healthy, mine.domain_name,
                     f"cat /desk/token >/dev/ttyS0 && echo r{answered} >/dev/ttyS0\n", serial,
                     f"r{answered}".encode())
    assert f"d{token}".encode() in log, (
        "the shell answers, but the file written before the failure is not on the disk: "
        f"{log[-400:]!r}")

    # the failed host answers again: marked up, its stale copies removed
    victim.restart_libvirtd()
    TIMINGS["owners_after_victim_restart"] = {
        d.domain_name: owner(rig.disk(d)) for d in on_victim.values()}
    await rig.until("the victim is up again", victim_is(HostStatus.UP), rounds=3)
    await rig.until("the stale copies on the victim are gone", lambda: not domains(victim),
                    rounds=3)
    running = domains(healthy)
    for d in on_victim.values():
        now = rig.catalog.desktop(d.id)
        assert now is not None and now.host_uri == healthy.uri, rig.state()
        assert running.get(d.domain_name) is True, (d.domain_name, running)
        assert rig.disk(d).exists()  # the shared disks the moved desktops use are kept
        console_greets(now.console)
    TIMINGS["owners_after_reconcile"] = {
        d.domain_name: owner(rig.disk(d)) for d in on_victim.values()}
    # the clerk of the floating pool gets a desktop on the healthy host
    again = rig.assigner.assign("window", clerk(1))
    assert again.host_uri == healthy.uri


# --- 4. a host cut off the network ----------------------------------------------------------


async def test_cut_off_host_is_noticed_through_keepalive_and_its_desktops_remade(
        rig: Rig) -> None:
    """The victim's link goes down: libvirtd and qemu keep running there, calls to it
    hang until the adapter's keepalive (or the call's deadline) gives up."""
    rig.register(shared_storage=True)
    rig.catalog.save_pool(floating(min_ready=2, max_size=3))
    await rig.settle(2)
    victim, healthy = rig.a, rig.b
    [gone] = [d for d in rig.live("window") if d.host_uri == victim.uri]
    victim_qemu = qemu_pids(victim, gone.domain_name)
    assert victim_qemu, rig.state()
    inode = rig.disk(gone).stat().st_ino

    t_cut = time.monotonic()
    victim.cut_network()
    try:
        def victim_is(status: HostStatus) -> Callable[[], bool]:
            return lambda: rig.registry.host(  # type: ignore[union-attr]
                victim.uri).status is status

        await rig.until("the cut-off host is marked down", victim_is(HostStatus.DOWN),
                        rounds=30, bound_s=90, pause_s=1)
        TIMINGS["cut_detect_s"] = round(time.monotonic() - t_cut, 2)
        TIMINGS["cut_victim_error"] = rig.registry.host(victim.uri).error  # type: ignore[union-attr]

        def back() -> bool:
            d = rig.catalog.desktop(gone.id)
            return d is not None and d.host_uri == healthy.uri and d.state is DesktopState.READY

        await rig.until("its floating desktop is remade on the healthy host", back,
                        rounds=30, bound_s=90, pause_s=1)
        TIMINGS["cut_floating_back_s"] = round(time.monotonic() - t_cut, 2)
        assert rig.registry.host(healthy.uri).status is HostStatus.UP, rig.state()  # type: ignore[union-attr]
        now = rig.catalog.desktop(gone.id)
        assert now is not None and now.console is not None and now.console.host == healthy.address
        console_greets(now.console)
        assert domains(healthy).get(gone.domain_name) is True
        assert rig.disk(gone).stat().st_ino != inode  # a fresh clone
        # nothing deleted on the cut-off host: its definition and qemu are still there
        assert (victim.dir / "etc" / "qemu" / f"{gone.domain_name}.xml").exists()
        assert all(p in victim.pids() for p in victim_qemu)
    finally:
        victim.restore_network()
    t_restore = time.monotonic()
    await rig.until("the host is up again", victim_is(HostStatus.UP), rounds=90,
                    bound_s=90, pause_s=1)
    await rig.until("its stale copy is removed", lambda: not domains(victim), rounds=3)
    TIMINGS["cut_reconciled_after_restore_s"] = round(time.monotonic() - t_restore, 2)
    assert not any(p in victim.pids() for p in victim_qemu)
    assert domains(healthy).get(gone.domain_name) is True  # the moved one keeps running
    assert rig.disk(gone).exists()
    console_greets(now.console)


# --- 5. `vdi host-drain` to a running worker ------------------------------------------------


async def test_host_drain_command_is_carried_out_by_the_running_worker(
        rig: Rig, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The admin's command, not the monitor's method: `vdi host-drain` writes the
    maintenance flag and the MIGRATE job to the database; the broker's worker, running
    on its own (its loop, the real clock), picks the job up and live-migrates the clerk's
    running desktop to the other host."""
    rig.register(shared_storage=True)
    rig.catalog.save_pool(dedicated(min_ready=1, max_size=1))  # one desktop: one to move
    worker = PoolWorker(rig.db, rig.calls, rig.images, domain_prefix=PREFIX,
                        interval_s=0.5, job_lease_s=30, host_check_interval_s=2,
                        down_after_s=60, reconcile_every_s=60)
    assigner = Assigner(rig.db)  # the real clock too: the idle policy runs in the worker
    running = asyncio.create_task(worker.run())
    try:
        async def until(what: str, done: Callable[[], bool], bound_s: float) -> None:
            deadline = time.monotonic() + bound_s
            while not done():
                if running.done() or time.monotonic() > deadline:
                    pytest.fail(f"{what}: not within {bound_s:.0f} s\n{rig.state()}")
                await asyncio.sleep(0.2)

        await until("a ready desktop", lambda: any(
            d.state is DesktopState.READY for d in rig.live("own")), BOOT_BOUND_S)
        mine = assigner.assign("own", clerk(1))
        src = rig.host(mine.host_uri)
        dst = rig.other(src)
        serial = rig.serial(mine)
        await asyncio.to_thread(wait_for, serial, b"VDI-READY",
                                src.qemu_log(mine.domain_name), BOOT_BOUND_S)
        token = secrets.token_hex(4)
        await asyncio.to_thread(type_until, src, mine.domain_name,
                                f"m={token}\necho a$m >/dev/ttyS0\n", serial,
                                f"a{token}".encode())
        disk_inode = rig.disk(mine).stat().st_ino

        for name in list(os.environ):  # the command reads only the file below
            if name.startswith("VDI_"):
                monkeypatch.delenv(name)
        config = tmp_path / "vdi.toml"
        config.write_text(f'state_dir = "{tmp_path}"\ndatabase_url = "{db_url}"\n',
                          encoding="utf-8")
        capsys.readouterr()
        t0 = time.monotonic()
        assert await asyncio.to_thread(
            vdi_main, ["--config", str(config), "host-drain", f"h{src.index}"]) == 0
        said = capsys.readouterr().out
        assert f"host h{src.index}: maintenance on" in said, said
        assert "1 dedicated desktop(s) to live-migrate" in said, said

        def migrated() -> bool:
            return any(j.kind == JobKind.MIGRATE.value and j.state in (
                JobState.DONE.value, JobState.FAILED.value) for j in rig.jobs(mine.id))

        await until("the MIGRATE job ends", migrated, 240)
        TIMINGS["drain_command_to_migrated_s"] = round(time.monotonic() - t0, 2)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    [job] = [j for j in rig.jobs(mine.id) if j.kind == JobKind.MIGRATE.value]
    assert job.state == JobState.DONE.value, (
        f"{job.error}\n{rig.state()}\nsrc: {src.qemu_log(mine.domain_name)}\n"
        f"dst: {dst.qemu_log(mine.domain_name)}")
    moved = rig.catalog.desktop(mine.id)
    assert moved is not None and moved.host_uri == dst.uri, rig.state()
    assert (moved.state, moved.assigned_user) == (DesktopState.ASSIGNED, "clerk1")
    assert moved.console is not None and moved.console.host == dst.address
    console_greets(moved.console)
    assert domains(dst).get(mine.domain_name) is True
    assert mine.domain_name not in domains(src)
    assert rig.disk(mine).stat().st_ino == disk_inode
    # the same running guest: the variable set before the move is still in its shell
    log = type_until(dst, mine.domain_name, "echo b$m >/dev/ttyS0\n", serial,
                     f"b{token}".encode())
    assert log.count(b"VDI-READY") == 1  # no second boot
    assert rig.registry.host(src.uri).maintenance  # type: ignore[union-attr]
