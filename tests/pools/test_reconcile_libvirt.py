"""The reconciler against the real libvirtd (qemu:///system), not a fake.

test_hosts.py proves the repairs on FakeHypervisors; this module proves that the same
code (`HostMonitor.reconcile`, the `PoolWorker` tick and the jobs it starts) repairs drift
that an admin or a crash makes on a real host, with real domains and real disks:

* a floating desktop's domain deleted by hand (virsh destroy + undefine): reconcile
  remakes it (REVERT job), a new domain under the same name boots, the desktop is `ready`;
* a dedicated desktop's domain stopped by hand (virsh destroy): the worker's periodic
  reconcile restarts it (RESTART job) from the same disk: the same domain (UUID), the same
  volume file (path, inode and an extended attribute the test put on it), its user kept,
  and the guest boots a second time and mounts that disk;
* a domain under the broker's prefix that the database does not know: reconcile
  undefines it and keeps its disk volume (a disk it cannot account for is never deleted),
  and leaves the desktops it knows alone;
* a desktop left in `provisioning` by a broker that died after making its domain (its
  job `running` with a lease that ran out, or its job row lost): a new worker's tick
  finishes it, adopting the domain the dead broker made (one domain, the same UUID).

Every test works under a domain prefix of its own (below the session's `vdit-<hex>-`),
so the reconciler sees only that test's domains, and removes every domain, volume and
log under it afterwards, also when it fails. The broker's clocks (job leases, backoff,
host checks, reconcile interval) are a ManualClock; libvirt and the guests run in real
time, so their state is polled with real deadlines.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import libvirt
import pytest
from defusedxml.ElementTree import fromstring as parse_xml
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from broker.assignment import Assigner
from pools.calls import HostCalls
from pools.hosts import Host, HostRegistry
from pools.hypervisor import DesktopSpec, Hypervisor, ImageDisk
from pools.images import ImageStore
from pools.jobs.queue import JobKind, JobState
from pools.libvirt.host import LibvirtHost
from pools.worker import PoolWorker
from tests.conftest import (
    LIBVIRT_LOG_DIR,
    LIBVIRT_URI,
    TEST_STORAGE_DIR,
    TEST_STORAGE_POOL,
    DomainNames,
    ManualClock,
    remove_test_objects,
)
from tests.pools.test_worker import clerk, make_pool
from vdi.catalog import Catalog
from vdi.domain import ConsoleEndpoint, Desktop, DesktopState, Pool, PoolKind
from vdi.models import DesktopRow, JobRow

pytestmark = pytest.mark.real

T = TypeVar("T")
BOOT_BOUND_S = 90.0  # a TCG guest boots in ~2 s; the machine may be busy with others
RECONCILE_EVERY_S = 60.0
LEASE_S = 30.0
MARKER_XATTR = "user.vdit-reconcile"


# --- libvirt as seen from outside the broker ------------------------------------------


def virsh(*args: str) -> str:
    """An admin at the host's console, behind the broker's back."""
    result = subprocess.run(["virsh", "-q", "-c", LIBVIRT_URI, *args], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, f"virsh {' '.join(args)}: {result.stderr.strip()}"
    return result.stdout


def virsh_define(xml: str) -> None:
    """An admin defines a domain of their own on the host, behind the broker's back."""
    result = subprocess.run(["virsh", "-q", "-c", LIBVIRT_URI, "define", "/dev/stdin"],
                            input=xml, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr


@dataclass(frozen=True)
class Seen:
    """A domain as libvirt reports it (read with a connection of the test's own)."""

    uuid: str
    running: bool
    disk: str  # the file behind its vda


class Libvirt:
    """Read-only views of the real host, independent of the adapter under test."""

    def __init__(self) -> None:
        self._conn = libvirt.open(LIBVIRT_URI)

    def close(self) -> None:
        self._conn.close()

    def domain(self, name: str) -> Seen | None:
        try:
            dom = self._conn.lookupByName(name)
            xml = dom.XMLDesc(0)
            running = bool(dom.isActive())
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise
        source = parse_xml(xml).find("./devices/disk[@device='disk']/source")
        return Seen(uuid=dom.UUIDString(), running=running,
                    disk=source.get("file", "") if source is not None else "")

    def names(self, prefix: str) -> list[str]:
        return sorted(d.name() for d in self._conn.listAllDomains(0)
                      if d.name().startswith(prefix))


@pytest.fixture(scope="module")
def virt(libvirt_host: LibvirtHost) -> Iterator[Libvirt]:
    """Needs `libvirt_host`: it fails with the reason when libvirtd cannot be reached."""
    view = Libvirt()
    yield view
    view.close()


async def eventually(what: str, probe: Callable[[], T | None], bound_s: float,
                     context: Callable[[], str] = lambda: "") -> T:
    """probe()'s first answer that is not None, polled in real time; fails after bound_s."""
    deadline = time.monotonic() + bound_s
    while True:
        answer = probe()
        if answer is not None:
            return answer
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {bound_s:.0f} s\n{context()}")
        await asyncio.sleep(0.2)


def volume(name: str) -> Path:
    return TEST_STORAGE_DIR / f"{name}.qcow2"


def mark(disk: Path, marker: bytes) -> None:
    """Tag the volume file itself: a file deleted and made again would not carry it."""
    os.setxattr(disk, MARKER_XATTR, marker)


def identity(disk: Path) -> tuple[int, bytes | None]:
    """The volume file's inode and the tag put on it, if any."""
    try:
        marker: bytes | None = os.getxattr(disk, MARKER_XATTR)
    except OSError:
        marker = None
    return disk.stat().st_ino, marker


# --- the broker's pool machinery on the real host ------------------------------------------


class Rig:
    """One database, the real host, one ManualClock, and workers as brokers make them."""

    def __init__(self, db: sessionmaker[Session], host: LibvirtHost, virt: Libvirt,
                 prefix: str, image_id: str, guest_image: ImageDisk) -> None:
        self.db = db
        self.host = host
        self.virt = virt
        self.prefix = prefix
        self.image_id = image_id
        self.clock = ManualClock()
        self.calls = HostCalls({LIBVIRT_URI: host}, timeout_s=30)
        self.images = ImageStore(db)
        self.images.publish(host, image_id, guest_image)  # the session's volumes, reused
        self.catalog = Catalog(db)
        self.assigner = Assigner(db, clock=self.clock)
        self.worker = self.new_worker(self.calls)

    def new_worker(self, calls: HostCalls) -> PoolWorker:
        """A worker as a (re)started broker makes one: a new lease owner."""
        return PoolWorker(self.db, calls, self.images, domain_prefix=self.prefix,
                          interval_s=1.0, clock=self.clock, job_lease_s=LEASE_S,
                          host_check_interval_s=5, reconcile_every_s=RECONCILE_EVERY_S)

    def pool(self, kind: PoolKind, min_ready: int = 1, max_size: int = 2) -> Pool:
        base = make_pool(min_ready=min_ready, max_size=max_size, pool_id=kind.value,
                         image=self.image_id)
        pool = Pool(**{**base.__dict__, "kind": kind})
        self.catalog.save_pool(pool)
        return pool

    async def settle(self, worker: PoolWorker | None = None) -> None:
        """One worker round: a tick, and every job it started run to its end."""
        worker = worker or self.worker
        await worker.tick()
        await worker.drain()

    def only_desktop(self, pool: Pool) -> Desktop:
        desktops = self.catalog.desktops(pool.id)
        assert len(desktops) == 1, f"one desktop in pool {pool.id} expected\n{self.state()}"
        return desktops[0]

    def jobs(self, desktop_id: str) -> list[tuple[str, str]]:
        """(kind, state) of the desktop's jobs, oldest first."""
        with self.db() as s:
            return [(j.kind, j.state) for j in s.scalars(
                select(JobRow).where(JobRow.desktop_id == desktop_id).order_by(JobRow.id))]

    def running(self, name: str) -> Seen:
        seen = self.virt.domain(name)
        assert seen is not None and seen.running, f"{name} not running: {seen}\n{self.state()}"
        return seen

    def endpoint(self, name: str) -> ConsoleEndpoint:
        return self.host.console_endpoint(name)

    async def booted(self, name: str, times: int = 1) -> None:
        """Once the guest's serial log shows `times` boots that mounted the disk and
        reached the shell."""
        log = Path(self.host.serial_log_path(name))

        def probe() -> bool | None:
            data = log.read_bytes() if log.exists() else b""
            return min(data.count(b"VDI-DISK-OK"), data.count(b"VDI-READY")) >= times or None

        await eventually(f"{name} boot #{times} with its disk", probe, BOOT_BOUND_S,
                         lambda: f"{log} ends with: {self._tail(log)!r}")

    @staticmethod
    def _tail(log: Path) -> bytes:
        return log.read_bytes()[-600:] if log.exists() else b"(no log)"

    def state(self) -> str:
        """Desktops, jobs and the test's domains (for failure messages)."""
        with self.db() as s:
            lines = [f"desktop {r.id} {r.state} {r.domain_name} user={r.assigned_user} "
                     f"console={r.console_port} error={r.error}"
                     for r in s.scalars(select(DesktopRow).order_by(DesktopRow.id))]
            lines += [f"job {j.id} {j.kind} {j.desktop_id} {j.state} step={j.step} "
                      f"owner={j.lease_owner} error={j.error}"
                      for j in s.scalars(select(JobRow).order_by(JobRow.id))]
        lines += [f"domain {n}: {self.virt.domain(n)}" for n in self.virt.names(self.prefix)]
        return "\n".join(lines)


@pytest.fixture
def rig(db: sessionmaker[Session], libvirt_host: LibvirtHost, virt: Libvirt,
        domain_names: DomainNames, guest_image: ImageDisk) -> Iterator[Rig]:
    """The rig under a prefix of this test's own; all under it is removed afterwards."""
    prefix = domain_names.new("reconcile") + "-"
    r = Rig(db, libvirt_host, virt, prefix, f"{domain_names.prefix}img", guest_image)
    try:
        yield r
    finally:
        r.calls.close()
        problems = remove_test_objects(prefix)
        assert not problems, f"could not clean up after the test: {problems}"


# --- the cases -------------------------------------------------------------------------------


async def test_a_domain_deleted_by_hand_is_remade(rig: Rig) -> None:
    window = rig.pool(PoolKind.FLOATING)
    await rig.settle()
    spare = rig.only_desktop(window)
    assert spare.state is DesktopState.READY, rig.state()
    before = rig.running(spare.domain_name)

    virsh("destroy", spare.domain_name)
    virsh("undefine", spare.domain_name)  # its disk volume stays, as an admin leaves it
    assert rig.virt.domain(spare.domain_name) is None

    rig.clock.advance(5)  # the reconciler looks some time after the last change
    repairs = await rig.worker.monitor.reconcile(LIBVIRT_URI)
    assert (repairs.removed, repairs.remade) == ([], [spare.id])
    gone = rig.catalog.desktop(spare.id)
    assert gone is not None and gone.state is DesktopState.RECLAIMING  # no clerk gets it now
    assert rig.jobs(spare.id)[-1] == (JobKind.REVERT.value, JobState.PENDING.value)

    await rig.settle()
    remade = rig.only_desktop(window)
    assert (remade.id, remade.domain_name) == (spare.id, spare.domain_name)
    assert (remade.state, remade.error) == (DesktopState.READY, None), rig.state()
    assert rig.jobs(spare.id)[-1] == (JobKind.REVERT.value, JobState.DONE.value)
    after = rig.running(spare.domain_name)
    assert after.uuid != before.uuid  # a new domain under the same name
    assert after.disk == str(volume(spare.domain_name))
    assert remade.console is not None
    assert remade.console.port == rig.endpoint(spare.domain_name).port
    assert rig.virt.names(rig.prefix) == [spare.domain_name]
    await rig.booted(spare.domain_name)


async def test_a_dedicated_domain_stopped_by_hand_is_restarted_on_its_own_disk(
        rig: Rig) -> None:
    own = rig.pool(PoolKind.DEDICATED, min_ready=1, max_size=1)
    await rig.settle()
    mine = rig.assigner.assign(own.id, clerk(1))
    await rig.booted(mine.domain_name)
    before = rig.running(mine.domain_name)
    disk = Path(before.disk)
    assert disk == volume(mine.domain_name)
    mark(disk, mine.id.encode())
    file_before = identity(disk)
    assert file_before[1] == mine.id.encode()

    virsh("destroy", mine.domain_name)  # powered off; still defined, disk untouched
    stopped = rig.virt.domain(mine.domain_name)
    assert stopped is not None and not stopped.running

    # not called by the test: the worker reconciles the host on its own schedule
    rig.clock.advance(RECONCILE_EVERY_S)
    await rig.settle()
    assert rig.jobs(mine.id) == [(JobKind.PROVISION.value, JobState.DONE.value),
                                 (JobKind.RESTART.value, JobState.DONE.value)], rig.state()
    back = rig.catalog.desktop(mine.id)
    assert back is not None, rig.state()
    assert (back.state, back.assigned_user, back.error) == (
        DesktopState.ASSIGNED, "clerk1", None), rig.state()
    after = rig.running(mine.domain_name)
    assert after == before  # the same domain (UUID) on the same disk file, running
    assert identity(disk) == file_before  # the same file: same inode, still tagged
    assert back.console is not None and back.console.port == rig.endpoint(mine.domain_name).port
    await rig.booted(mine.domain_name, times=2)  # booted again, mounting that disk


async def test_a_stray_domain_is_undefined_and_its_disk_kept(rig: Rig) -> None:
    window = rig.pool(PoolKind.FLOATING)
    await rig.settle()
    known = rig.only_desktop(window)
    known_before = rig.running(known.domain_name)
    _, files = rig.images.files(LIBVIRT_URI, rig.image_id)
    stray = f"{rig.prefix}stray-1"
    rig.host.create_desktop(DesktopSpec(name=stray, desktop_id="stray-1", pool_id=window.id,
                                        vcpus=1, memory_mib=128, image=files))
    assert rig.running(stray).disk == str(volume(stray))

    rig.clock.advance(5)  # the reconciler looks some time after the last change
    repairs = await rig.worker.monitor.reconcile(LIBVIRT_URI)
    assert (repairs.removed, repairs.remade) == ([stray], [])
    assert rig.virt.domain(stray) is None
    assert volume(stray).is_file()  # never delete a disk it cannot account for
    assert stray + ".qcow2" in virsh("vol-list", "--pool", TEST_STORAGE_POOL)
    # the desktop the database knows is left as it was
    assert rig.running(known.domain_name) == known_before
    assert rig.catalog.desktop(known.id) == known
    assert rig.jobs(known.id) == [(JobKind.PROVISION.value, JobState.DONE.value)]
    # the rig's teardown removes the kept volume with everything else under the prefix


async def test_a_domain_the_broker_did_not_make_is_noted_for_the_alert(rig: Rig) -> None:
    by_hand = rig.prefix.rstrip("-") + "x-by-hand"  # the session's prefix, not the rig's
    HostRegistry(rig.db).add(Host(uri=LIBVIRT_URI, name="local", graphics_listen="127.0.0.1",
                                  storage_pool=TEST_STORAGE_POOL,
                                  storage_dir=str(TEST_STORAGE_DIR),
                                  log_dir=str(LIBVIRT_LOG_DIR)))
    virsh_define(f"<domain type='qemu'><name>{by_hand}</name><memory unit='MiB'>64</memory>"
                 "<os><type>hvm</type></os></domain>")
    try:
        await rig.worker.monitor.reconcile(LIBVIRT_URI)
        host = HostRegistry(rig.db).host(LIBVIRT_URI)
        assert host is not None and by_hand in host.foreign_domains
        assert rig.virt.domain(by_hand) is not None  # noted, never touched
    finally:
        virsh("undefine", by_hand)
    await rig.worker.monitor.reconcile(LIBVIRT_URI)
    host = HostRegistry(rig.db).host(LIBVIRT_URI)
    assert host is not None and by_hand not in host.foreign_domains


class BrokerKilled(Exception):
    """Stands for the broker process dying: nothing after it runs, nothing is recorded."""


class DiesAfterCreate(LibvirtHost):
    """The real host adapter of a broker that dies right after libvirt made the domain."""

    def create_desktop(self, spec: DesktopSpec) -> ConsoleEndpoint:
        super().create_desktop(spec)
        raise BrokerKilled(spec.name)


@pytest.mark.parametrize("job_lost", [False, True], ids=["lease-ran-out", "job-lost"])
async def test_a_desktop_left_provisioning_by_a_dead_broker_is_finished(
        rig: Rig, job_lost: bool) -> None:
    dying = DiesAfterCreate(LIBVIRT_URI, storage_pool=TEST_STORAGE_POOL,
                            storage_dir=TEST_STORAGE_DIR, domain_type="qemu",
                            log_dir=LIBVIRT_LOG_DIR)
    adapters: dict[str, Hypervisor] = {LIBVIRT_URI: dying}
    dead_calls = HostCalls(adapters, timeout_s=30)
    try:
        window = rig.pool(PoolKind.FLOATING, min_ready=1, max_size=2)
        dead = rig.new_worker(dead_calls)
        await rig.settle(dead)
    finally:
        dead_calls.close()
        dying.close()
    left = rig.only_desktop(window)
    assert left.state is DesktopState.PROVISIONING, rig.state()
    made = rig.running(left.domain_name)  # the dead broker got that far
    with rig.db.begin() as s:
        [job] = s.scalars(select(JobRow).where(JobRow.desktop_id == left.id))
        assert (job.kind, job.state, job.step, job.lease_owner) == (
            JobKind.PROVISION.value, JobState.RUNNING.value, "create", dead.jobs.owner)
        if job_lost:
            s.execute(delete(JobRow).where(JobRow.desktop_id == left.id))

    rig.clock.advance(2 * LEASE_S)  # the dead broker's lease runs out
    await rig.settle(rig.new_worker(rig.calls))  # the restarted broker
    done = rig.only_desktop(window)
    assert (done.id, done.state, done.error) == (left.id, DesktopState.READY, None), rig.state()
    assert rig.jobs(left.id) == [(JobKind.PROVISION.value, JobState.DONE.value)]
    assert rig.virt.names(rig.prefix) == [left.domain_name]  # exactly one domain
    assert rig.running(left.domain_name) == made  # the one the dead broker made, adopted
    assert done.console is not None and done.console.port == rig.endpoint(left.domain_name).port
