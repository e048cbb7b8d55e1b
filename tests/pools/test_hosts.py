"""Several hosts: placement, maintenance drain, host failure and the reconciler, against
FakeHypervisors sharing storage (their contract is checked against libvirtd) and a real
SQLite database. The same against real libvirtd hosts: tests/pools/test_multihost.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from broker.assignment import Assigner
from pools.calls import HostCalls
from pools.fake_hypervisor import FakeHypervisor
from pools.hosts import Host, HostError, HostLoad, HostRegistry, HostStatus, Limits, place
from pools.hypervisor import DesktopSpec, DomainInfo, ImageDisk
from pools.images import ImageStore
from pools.jobs.queue import JobKind
from pools.worker import PoolWorker
from tests.conftest import ManualClock
from tests.pools.test_worker import PREFIX, clerk, make_pool
from vdi.catalog import Catalog
from vdi.domain import Arch, ConsoleEndpoint, Desktop, DesktopState, Pool, PoolKind
from vdi.models import DesktopRow, JobRow

GIB = 1024


def host(name: str, memory_mib: int = 8 * GIB, cpus: int = 4, **changes: object) -> Host:
    values: dict[str, object] = {
        "uri": f"fake://{name}/system", "name": name, "graphics_listen": "127.0.0.1",
        "storage_pool": "p", "storage_dir": "/d", "log_dir": "/l", "status": HostStatus.UP,
        "memory_mib": memory_mib, "cpus": cpus, **changes}
    return Host(**values)  # type: ignore[arg-type]


def pool(pool_id: str = "window", **changes: object) -> Pool:
    values = {**make_pool(min_ready=1, max_size=8, pool_id=pool_id).__dict__, **changes}
    return Pool(**values)


# --- placement (pure) --------------------------------------------------------------------


def test_placement_prefers_the_most_free_memory_then_fewest_in_work() -> None:
    a, b = host("a"), host("b")
    loads = [HostLoad(a, memory_mib=2 * GIB), HostLoad(b, memory_mib=1 * GIB)]
    chosen = place(pool(), loads, Limits())
    assert chosen is not None and chosen.host is b
    even = [HostLoad(a, in_work=2), HostLoad(b, in_work=0)]
    chosen = place(pool(), even, Limits())
    assert chosen is not None and chosen.host is b


@pytest.mark.parametrize(("why", "hosts", "limits"), [
    ("memory full", [HostLoad(host("a", memory_mib=1024), memory_mib=1000)], Limits()),
    ("vCPUs full", [HostLoad(host("a", cpus=1), vcpus=4)], Limits(cpu_overcommit=4.0)),
    ("maintenance", [HostLoad(host("a", maintenance=True))], Limits()),
    ("down", [HostLoad(host("a", status=HostStatus.DOWN))], Limits()),
    ("never answered", [HostLoad(host("a", status=HostStatus.UNKNOWN))], Limits()),
])
def test_placement_refuses(why: str, hosts: list[HostLoad], limits: Limits) -> None:
    assert place(pool(), hosts, limits) is None, why


def test_overcommit_and_pool_host_lists_are_obeyed() -> None:
    a = host("a", memory_mib=1024)
    assert place(pool(memory_mib=128), [HostLoad(a, memory_mib=1000)], Limits()) is None
    chosen = place(pool(memory_mib=128), [HostLoad(a, memory_mib=1000)],
                   Limits(memory_overcommit=1.5))
    assert chosen is not None
    b = host("b")
    only_a = pool(hosts=(a.uri,))
    chosen = place(only_a, [HostLoad(a), HostLoad(b)], Limits())
    assert chosen is not None and chosen.host is a


# --- a rig of two fake hosts sharing storage -----------------------------------------------


class Rig:
    def __init__(self, db: sessionmaker[Session], guest_image: ImageDisk) -> None:
        self.db = db
        shared: dict[str, int] = {}
        self.a = FakeHypervisor("fake://a/system", memory_mib=4 * GIB, disks=shared)
        self.b = FakeHypervisor("fake://b/system", memory_mib=4 * GIB, disks=shared)
        self.calls = HostCalls({self.a.uri: self.a, self.b.uri: self.b}, timeout_s=5)
        self.images = ImageStore(db)
        for h in (self.a, self.b):
            self.images.publish(h, "demo", guest_image)
        self.catalog = Catalog(db)
        self.clock = ManualClock()
        self.assigner = Assigner(db, clock=self.clock)
        self.registry = HostRegistry(db, self.clock)
        self.worker = PoolWorker(db, self.calls, self.images, domain_prefix=PREFIX,
                                 interval_s=1.0, clock=self.clock, job_lease_s=30,
                                 host_check_interval_s=5, down_after_s=30,
                                 reconcile_every_s=60)

    async def settle(self, rounds: int = 5, step_s: float = 0) -> None:
        for _ in range(rounds):
            await self.worker.tick()
            await self.worker.drain()
            if step_s:
                self.clock.advance(step_s)

    def on(self, fake: FakeHypervisor, pool_id: str = "window") -> list[Desktop]:
        return [d for d in self.catalog.desktops(pool_id) if d.host_uri == fake.uri
                and d.state is not DesktopState.DELETED]

    def shared(self, shared: bool = True) -> None:
        for h in self.registry.hosts():
            self.registry.add(Host(**{**h.__dict__, "shared_storage": shared}))


@pytest.fixture
def rig(db: sessionmaker[Session], guest_image: ImageDisk) -> Iterator[Rig]:
    r = Rig(db, guest_image)
    yield r
    r.calls.close()


async def test_desktops_spread_over_both_hosts(rig: Rig) -> None:
    rig.catalog.save_pool(pool(min_ready=6, memory_mib=512))
    await rig.settle()
    assert {h.name: h.status for h in rig.registry.hosts()} == {
        "a": HostStatus.UP, "b": HostStatus.UP}
    # what each reported it runs is recorded (for `vdi hosts` and the admin console)
    assert {h.name: h.arches for h in rig.registry.hosts()} == {
        "a": {Arch.X86_64}, "b": {Arch.X86_64}}
    assert len(rig.on(rig.a)) == 3 and len(rig.on(rig.b)) == 3
    assert len(rig.a.domains) == 3 and len(rig.b.domains) == 3


class CreateCounter:
    """Wraps a fake host's create_desktop: each call takes a while (in the caller's
    thread, as libvirt does) and the most calls at once on this host are recorded."""

    def __init__(self, fake: FakeHypervisor, takes_s: float = 0.15) -> None:
        self._create = fake.create_desktop
        self._takes_s = takes_s
        self._lock = threading.Lock()
        self.now = self.most = self.calls = 0
        fake.create_desktop = self  # type: ignore[method-assign]

    def __call__(self, spec: DesktopSpec) -> ConsoleEndpoint:
        with self._lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(self._takes_s)
            return self._create(spec)
        finally:
            with self._lock:
                self.now -= 1


async def test_each_host_makes_at_most_its_cap_of_desktops_at_once(rig: Rig) -> None:
    a, b = CreateCounter(rig.a), CreateCounter(rig.b)
    rig.catalog.save_pool(pool(min_ready=8, memory_mib=256))
    await rig.settle()
    assert a.calls == 4 and b.calls == 4
    assert a.most == 2 and b.most == 2  # the cap (2), and both slots used
    # a down host's desktops are remade on b two at a time: b's own slots, not a's
    rig.a.down = True
    await rig.settle(1)
    await rig.settle(3, step_s=31)
    assert len(rig.on(rig.b)) == 8 and b.calls == 8 and b.most == 2


async def test_a_full_host_gets_no_more_and_a_pool_limited_to_one_host_stays_there(
        rig: Rig) -> None:
    rig.catalog.save_pool(pool(min_ready=6, max_size=8, memory_mib=1024, hosts=(rig.a.uri,)))
    await rig.settle()
    assert len(rig.on(rig.a)) == 4 and not rig.on(rig.b)  # 4 x 1 GiB fill host a


async def test_maintenance_host_gets_nothing_new(rig: Rig) -> None:
    await rig.settle(1)  # the hosts register and answer
    rig.registry.set_maintenance("a", True)
    rig.catalog.save_pool(pool(min_ready=4))
    await rig.settle()
    assert not rig.on(rig.a) and len(rig.on(rig.b)) == 4


async def test_drain_migrates_dedicated_and_replaces_floating_spares(rig: Rig) -> None:
    await rig.settle(1)
    rig.registry.set_maintenance("b", True)
    rig.catalog.save_pool(pool(pool_id="window", kind=PoolKind.FLOATING, min_ready=2))
    rig.catalog.save_pool(pool(pool_id="own", kind=PoolKind.DEDICATED, min_ready=1))
    await rig.settle()
    in_use = rig.assigner.assign("window", clerk(1))
    mine = rig.assigner.assign("own", clerk(2))
    await rig.settle()
    rig.shared()
    rig.registry.set_maintenance("b", False)
    rig.registry.set_maintenance("a", True)
    disk = rig.a.domains[mine.domain_name].disk_serial
    moves = await rig.worker.monitor.drain("a")
    assert moves.migrated >= 1 and moves.relocated >= 1
    await rig.settle()
    # the dedicated desktop in use was live-migrated: same disk, same clerk, on b
    moved = rig.catalog.desktop(mine.id)
    assert moved is not None and moved.host_uri == rig.b.uri
    assert moved.state is DesktopState.ASSIGNED and moved.assigned_user == "clerk2"
    assert rig.b.domains[mine.domain_name].disk_serial == disk
    assert mine.domain_name not in rig.a.domains
    assert moved.console is not None and moved.console.port == rig.b.domains[mine.domain_name].port
    # floating spares are remade on b; the floating desktop in use stays until log-off
    assert [d.id for d in rig.on(rig.a)] == [in_use.id]
    rig.assigner.log_off("window", "clerk1")
    await rig.settle()
    assert not rig.on(rig.a) and not rig.on(rig.a, "own")
    assert not rig.a.domains


async def test_a_host_that_stops_answering_is_down_only_after_the_bound(rig: Rig) -> None:
    rig.catalog.save_pool(pool(min_ready=4, memory_mib=512))
    await rig.settle()
    before = {d.id: d.host_uri for d in rig.catalog.desktops("window")}
    rig.a.down = True
    await rig.settle(rounds=4, step_s=6)  # 24 s silent: not down yet
    assert rig.registry.host("a").status is HostStatus.UP  # type: ignore[union-attr]
    assert {d.id: d.host_uri for d in rig.catalog.desktops("window")} == before
    await rig.settle(rounds=3, step_s=6)
    assert rig.registry.host("a").status is HostStatus.DOWN  # type: ignore[union-attr]


async def test_host_failure_moves_desktops_and_the_returning_host_is_reconciled(
        rig: Rig) -> None:
    await rig.settle(1)
    rig.shared()
    rig.catalog.save_pool(pool(pool_id="window", kind=PoolKind.FLOATING, min_ready=2,
                               memory_mib=512))
    rig.catalog.save_pool(pool(pool_id="own", kind=PoolKind.DEDICATED, min_ready=2,
                               memory_mib=512))
    await rig.settle()
    floating = rig.assigner.assign("window", clerk(1))
    rig.assigner.assign("own", clerk(2))
    await rig.settle()
    victim = rig.a if floating.host_uri == rig.a.uri else rig.b
    healthy = rig.b if victim is rig.a else rig.a
    on_victim = {d.id: d for p in ("window", "own") for d in rig.on(victim, p)}
    disks = {d.domain_name: victim.domains[d.domain_name].disk_serial
             for d in on_victim.values()}
    victim.crash()  # no answer, and its guests died with it
    await rig.settle(rounds=8, step_s=6)  # > 30 s: down, desktops moved
    assert rig.registry.host(victim.uri).status is HostStatus.DOWN  # type: ignore[union-attr]
    for desktop_id, was in on_victim.items():
        now = rig.catalog.desktop(desktop_id)
        assert now is not None and now.host_uri == healthy.uri, (desktop_id, now)
        if was.pool_id == "own":  # dedicated: restarted elsewhere with its own disk
            assert healthy.domains[was.domain_name].disk_serial == disks[was.domain_name]
            assert now.state is was.state and now.assigned_user == was.assigned_user
        else:  # floating: a fresh clone, back among the spares
            assert healthy.domains[was.domain_name].disk_serial != disks[was.domain_name]
            assert now.state is DesktopState.READY and now.assigned_user is None
    # the clerk of the floating desktop reconnects into a desktop
    again = rig.assigner.assign("window", clerk(1))
    assert again.host_uri == healthy.uri
    # nothing was deleted on the host that did not answer; it comes back and is cleaned
    assert set(victim.domains) >= {d.domain_name for d in on_victim.values()}
    victim.down = False
    # reconciled when it answers, and again a round later: a desktop changed just
    # before a listing (the clerk's reconnect) waits for the next one
    await rig.settle(rounds=3, step_s=61)
    assert rig.registry.host(victim.uri).status is HostStatus.UP  # type: ignore[union-attr]
    assert not victim.domains  # the stale copies are gone
    for was in on_victim.values():  # and the disks the moved desktops use are kept
        assert was.domain_name in healthy.domains
        assert victim.disks[was.domain_name] == healthy.domains[was.domain_name].disk_serial


async def test_dedicated_desktops_without_shared_storage_wait_for_their_host(
        rig: Rig) -> None:
    rig.catalog.save_pool(pool(pool_id="own", kind=PoolKind.DEDICATED, min_ready=2,
                               memory_mib=512))
    await rig.settle()
    mine = rig.assigner.assign("own", clerk(1))
    home = rig.a if mine.host_uri == rig.a.uri else rig.b
    home.down = True
    await rig.settle(rounds=8, step_s=6)
    kept = rig.catalog.desktop(mine.id)
    assert kept is not None and kept.host_uri == home.uri
    assert kept.state is DesktopState.ASSIGNED and kept.assigned_user == "clerk1"
    home.down = False
    await rig.settle(rounds=2, step_s=6)
    assert mine.domain_name in home.domains


async def test_reconciler_repairs_drift(rig: Rig, guest_image: ImageDisk) -> None:
    rig.catalog.save_pool(pool(pool_id="window", kind=PoolKind.FLOATING, min_ready=2,
                               hosts=(rig.a.uri,)))
    rig.catalog.save_pool(pool(pool_id="own", kind=PoolKind.DEDICATED, min_ready=1,
                               hosts=(rig.a.uri,)))
    await rig.settle()
    gone, _ = rig.on(rig.a)
    [own] = rig.on(rig.a, "own")
    own_disk = rig.a.domains[own.domain_name].disk_serial
    rig.a.destroy_desktop(gone.domain_name)  # deleted by hand
    rig.a.destroy_desktop(own.domain_name, keep_disk=True)  # undefined by hand, disk kept
    _, files = rig.images.files(rig.a.uri, "demo")
    rig.a.create_desktop(DesktopSpec(name=f"{PREFIX}stray-1", desktop_id="stray-1",
                                     pool_id="window", vcpus=1, memory_mib=128, image=files))
    rig.a.create_desktop(DesktopSpec(name="someone-elses", desktop_id="x", pool_id="x",
                                     vcpus=1, memory_mib=128, image=files))
    rig.a.foreign.add("kylin-by-hand")  # defined at the host's console, no metadata of ours
    rig.clock.advance(10)  # the reconciler leaves desktops changed just before
    repairs = await rig.worker.monitor.reconcile(rig.a.uri)
    assert repairs.removed == [f"{PREFIX}stray-1"]
    host = HostRegistry(rig.db).host(rig.a.uri)
    assert host is not None and host.foreign_domains == ("kylin-by-hand", "someone-elses")
    assert sorted(repairs.remade) == sorted([gone.id, own.id])
    await rig.settle()
    assert "someone-elses" in rig.a.domains  # not ours by name: left alone
    assert gone.domain_name in rig.a.domains and own.domain_name in rig.a.domains
    assert rig.a.domains[own.domain_name].disk_serial == own_disk  # dedicated: its disk
    with rig.db() as s:
        kinds = {(j.desktop_id, j.kind) for j in s.scalars(select(JobRow))}
    assert (gone.id, JobKind.REVERT.value) in kinds and (own.id, JobKind.RESTART.value) in kinds


@pytest.mark.parametrize("changed_after_listing", [True, False])
async def test_reconciler_leaves_desktops_changed_after_its_listing(
        rig: Rig, changed_after_listing: bool) -> None:
    """The host is listed before a job makes a desktop and the database is read after
    it is marked ready: the desktop is not in the listing but is no drift."""
    rig.catalog.save_pool(pool(min_ready=1, hosts=(rig.a.uri,)))
    await rig.settle()
    [spare] = rig.on(rig.a)
    listing = rig.a.list_desktops

    def listed_before_it_was_made() -> list[DomainInfo]:
        seen = [d for d in listing() if d.name != spare.domain_name]
        rig.clock.advance(1)
        if changed_after_listing:  # its job records it just after the listing
            with rig.db.begin() as s:
                s.execute(update(DesktopRow).where(DesktopRow.id == spare.id)
                          .values(updated_at=rig.clock()))
        return seen

    rig.a.list_desktops = listed_before_it_was_made  # type: ignore[method-assign]
    rig.clock.advance(10)  # made well before the listing
    repairs = await rig.worker.monitor.reconcile(rig.a.uri)
    assert repairs.remade == ([] if changed_after_listing else [spare.id])


def test_host_records_refuse_bad_input(db: sessionmaker[Session]) -> None:
    registry = HostRegistry(db)
    with pytest.raises(HostError, match="libvirt URI"):
        registry.add(host("a", uri="10.0.0.2"))
    registry.add(host("a"))
    with pytest.raises(HostError, match="taken"):
        registry.add(host("a", uri="fake://other/system"))
    with pytest.raises(HostError, match="no such host"):
        registry.set_maintenance("nope", True)


async def test_a_host_without_the_image_gets_no_desktops_until_it_is_published(
        rig: Rig, guest_image: ImageDisk) -> None:
    c = FakeHypervisor("fake://c/system", memory_mib=64 * GIB)  # the roomiest by far
    rig.calls.hosts[c.uri] = c
    rig.catalog.save_pool(pool(min_ready=4, max_size=12, memory_mib=512))
    await rig.settle()
    assert not rig.on(c) and len(rig.on(rig.a)) + len(rig.on(rig.b)) == 4
    assert all(d.state is DesktopState.READY for d in rig.catalog.desktops("window"))
    rig.images.publish(c, "demo", guest_image, version=rig.images.released_version("demo"))
    rig.catalog.save_pool(pool(min_ready=8, max_size=12, memory_mib=512))
    await rig.settle()
    assert len(rig.on(c)) == 4  # the new room is used once the image is there


async def test_a_cut_off_host_that_comes_back_keeps_its_running_dedicated_desktop(
        rig: Rig) -> None:
    """The host lost contact but its guest ran on: the disk lock refuses the restart
    elsewhere, and when the host answers again it keeps the desktop (no power cycle)."""
    await rig.settle(1)
    rig.shared()
    rig.catalog.save_pool(pool(pool_id="own", kind=PoolKind.DEDICATED, min_ready=1,
                               hosts=(rig.a.uri, rig.b.uri)))
    await rig.settle()
    mine = rig.assigner.assign("own", clerk(1))
    home = rig.a if mine.host_uri == rig.a.uri else rig.b
    other = rig.b if home is rig.a else rig.a
    rig.catalog.save_pool(pool(pool_id="own", kind=PoolKind.DEDICATED, min_ready=0,
                               hosts=(rig.a.uri, rig.b.uri)))
    disk = home.domains[mine.domain_name].disk_serial
    home.down = True  # cut off: it does not answer, its guest keeps running
    await rig.settle(rounds=12, step_s=10)
    kept = rig.catalog.desktop(mine.id)
    assert kept is not None and kept.host_uri == home.uri  # not moved: the restart waits
    assert kept.state is DesktopState.ASSIGNED and kept.assigned_user == "clerk1"
    assert mine.domain_name not in other.domains
    with rig.db() as s:
        restart = s.scalars(select(JobRow).where(JobRow.desktop_id == mine.id,
                                                 JobRow.kind == JobKind.RESTART.value)).one()
        assert restart.state == "pending" and restart.error and "write\" lock" in restart.error
        assert restart.attempts == 0  # waiting on the lock is not a failed attempt
    home.down = False
    await rig.settle(rounds=3, step_s=10)
    back = rig.catalog.desktop(mine.id)
    assert back is not None and back.host_uri == home.uri
    assert home.domains[mine.domain_name].disk_serial == disk
    assert home.domains[mine.domain_name].running
    assert mine.domain_name not in other.domains
    with rig.db() as s:
        ended = s.get(JobRow, restart.id)
        assert ended is not None and ended.state == "failed"
        assert "runs it again" in (ended.error or "")
