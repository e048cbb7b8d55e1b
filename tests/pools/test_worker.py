"""The pool worker against FakeHypervisor (its contract is checked against libvirtd in
test_hypervisor_contract.py) and a real SQLite database."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.assignment import Assigner
from pools.calls import HostCalls
from pools.fake_hypervisor import FakeHypervisor
from pools.hypervisor import DesktopSpec, HypervisorError, ImageDisk
from pools.images import ImageStore
from pools.worker import PoolWorker, SparePlan
from tests.conftest import ManualClock
from vdi.catalog import Catalog
from vdi.domain import ConsoleEndpoint, DesktopState, Pool, PoolKind, Principal, Role
from vdi.models import DesktopRow

STAFF = "cn=window-staff,ou=groups,dc=district,dc=example"
PREFIX = "vdi-"


def make_pool(min_ready: int = 2, max_size: int = 4, pool_id: str = "window",
              image: str = "demo") -> Pool:
    return Pool(id=pool_id, display_name="Service window", kind=PoolKind.FLOATING, image=image,
                vcpus=1, memory_mib=128, min_ready=min_ready, max_size=max_size,
                entitled_groups=(STAFF,))


def clerk(n: int) -> Principal:
    return Principal(username=f"clerk{n}", display_name=f"Clerk {n}",
                     roles=frozenset({Role.STAFF}), groups=frozenset({STAFF}))


@dataclass(frozen=True)
class Row:
    id: str
    state: str
    domain_name: str
    vnc_port: int | None
    error: str | None


@dataclass
class Rig:
    db: sessionmaker[Session]
    fake: FakeHypervisor
    calls: HostCalls
    catalog: Catalog
    images: ImageStore
    clock: ManualClock = field(default_factory=ManualClock)

    def worker(self) -> PoolWorker:
        """A new worker, as a (re)started broker makes one."""
        return PoolWorker(self.db, self.calls, self.images,
                          domain_prefix=PREFIX, interval_s=1.0, clock=self.clock)

    def rows(self, pool_id: str = "window") -> list[Row]:
        with self.db() as s:
            return [Row(r.id, r.state, r.domain_name, r.console_port, r.error)
                    for r in s.scalars(select(DesktopRow).where(DesktopRow.pool_id == pool_id)
                                       .order_by(DesktopRow.id))]

    def states(self, pool_id: str = "window") -> list[str]:
        return sorted(r.state for r in self.rows(pool_id))


@pytest.fixture
def rig(db: sessionmaker[Session], guest_image: ImageDisk) -> Iterator[Rig]:
    fake = FakeHypervisor()
    calls = HostCalls({fake.uri: fake}, timeout_s=5)
    images = ImageStore(db)
    images.publish(fake, "demo", guest_image)
    yield Rig(db=db, fake=fake, calls=calls, catalog=Catalog(db), images=images)
    calls.close()


async def run_tick(worker: PoolWorker) -> None:
    await worker.tick()
    await worker.drain()


# --- the plan (pure) -----------------------------------------------------------------


@pytest.mark.parametrize(("min_ready", "max_size", "ready", "provisioning", "live", "add"), [
    (2, 4, 0, 0, 0, 2),   # empty pool: fill to min_ready
    (2, 4, 1, 0, 1, 1),   # one short
    (2, 4, 2, 0, 2, 0),   # at min_ready
    (2, 4, 3, 0, 3, 0),   # above min_ready: never negative
    (2, 4, 1, 1, 2, 0),   # the one being prepared counts
    (2, 4, 0, 0, 3, 1),   # three assigned: only one slot left
    (2, 4, 0, 0, 4, 0),   # at max_size
    (2, 4, 0, 0, 6, 0),   # above max_size (it was lowered): nothing, never negative
    (0, 4, 0, 0, 0, 0),   # no spares wanted
    (3, 3, 0, 0, 0, 3),   # min_ready == max_size
    (5, 10, 0, 2, 2, 3),  # some provisioning
])
def test_spare_plan(min_ready: int, max_size: int, ready: int, provisioning: int, live: int,
                    add: int) -> None:
    plan = SparePlan.for_pool(make_pool(min_ready, max_size), ready, provisioning, live)
    assert plan == SparePlan(add=add)


# --- the worker --------------------------------------------------------------------------


async def test_tick_brings_a_pool_to_min_ready(rig: Rig) -> None:
    rig.catalog.save_pool(make_pool(min_ready=2, max_size=4))
    worker = rig.worker()
    await run_tick(worker)
    rows = rig.rows()
    assert [r.state for r in rows] == ["ready", "ready"]
    on_host = {d.name: d for d in rig.fake.list_desktops()}
    for r in rows:
        assert r.domain_name == PREFIX + r.id
        assert on_host[r.domain_name].desktop_id == r.id
        assert on_host[r.domain_name].pool_id == "window"
        assert r.vnc_port == rig.fake.console_endpoint(r.domain_name).port
        assert r.error is None
    await run_tick(worker)
    assert rig.rows() == rows
    assert rig.fake.defined_count == 2


async def test_assigned_desktops_do_not_count_as_spares(rig: Rig) -> None:
    rig.catalog.save_pool(make_pool(min_ready=2, max_size=4))
    worker = rig.worker()
    await run_tick(worker)
    assigner = Assigner(rig.db)
    taken = {assigner.assign("window", clerk(n)).id for n in (1, 2)}
    await run_tick(worker)
    assert rig.states() == ["assigned", "assigned", "ready", "ready"]
    assert {r.id for r in rig.rows() if r.state == "assigned"} == taken
    assert len(rig.fake.list_desktops()) == 4


async def test_tick_never_grows_a_pool_over_max_size(rig: Rig) -> None:
    rig.catalog.save_pool(make_pool(min_ready=3, max_size=4))
    worker = rig.worker()
    await run_tick(worker)
    assigner = Assigner(rig.db)
    for n in (1, 2, 3):
        assigner.assign("window", clerk(n))
    await run_tick(worker)
    assert rig.states() == ["assigned"] * 3 + ["ready"]
    assigner.assign("window", clerk(4))
    await run_tick(worker)
    await run_tick(worker)
    assert rig.states() == ["assigned"] * 4
    assert rig.fake.defined_count == 4


async def test_a_host_that_is_down_keeps_desktops_and_resumes_them(rig: Rig) -> None:
    rig.catalog.save_pool(make_pool(min_ready=1, max_size=4))
    worker = rig.worker()
    await run_tick(worker)
    [ready] = rig.rows()
    rig.catalog.save_pool(make_pool(min_ready=3, max_size=4))
    rig.fake.down = True
    await run_tick(worker)
    await run_tick(worker)  # a second tick while down adds nothing and deletes nothing
    rows = rig.rows()
    assert ready in rows
    waiting = [r for r in rows if r != ready]
    assert len(waiting) == 2
    for r in waiting:
        assert r.state == "provisioning"
        assert r.error is not None and "does not answer" in r.error
    rig.fake.down = False
    assert ready.domain_name in [d.name for d in rig.fake.list_desktops()]
    rig.clock.advance(120)  # past the retry backoff
    await run_tick(worker)
    after = {r.id: r for r in rig.rows()}
    assert set(after) == {r.id for r in rows}  # the same desktops, no new ones
    assert all(r.state == "ready" and r.error is None for r in after.values())
    assert sorted(d.name for d in rig.fake.list_desktops()) == sorted(
        r.domain_name for r in after.values())
    assert rig.fake.defined_count == 3


async def test_a_hypervisor_error_puts_the_desktop_in_error(rig: Rig) -> None:
    rig.catalog.save_pool(make_pool(min_ready=1, max_size=4))
    rig.fake.create_error = HypervisorError("no space left on device")
    worker = rig.worker()
    await run_tick(worker)
    [row] = rig.rows()
    assert row.state == DesktopState.PROVISIONING.value  # tried again, a few times
    for _ in range(2):
        rig.clock.advance(120)
        await run_tick(worker)
    [row] = rig.rows()
    assert row.state == DesktopState.ERROR.value
    assert row.error is not None and "no space left on device" in row.error
    assert rig.fake.list_desktops() == []


async def test_an_unpublished_image_puts_the_desktop_in_error(rig: Rig) -> None:
    rig.catalog.save_pool(make_pool(min_ready=1, max_size=4, image="never-published"))
    await run_tick(rig.worker())
    [row] = rig.rows()
    assert row.state == DesktopState.ERROR.value
    assert row.error is not None and "not published" in row.error
    assert rig.fake.list_desktops() == []


class BrokerKilled(Exception):
    """Stands for the broker process dying: nothing after it runs (nothing is committed)."""


class BrokerKilledAfterCreate(FakeHypervisor):
    """While `kill` is set, the host starts the domain, then the broker dies before it
    records the answer."""

    kill = True

    def create_desktop(self, spec: DesktopSpec) -> ConsoleEndpoint:
        endpoint = super().create_desktop(spec)
        if self.kill:
            raise BrokerKilled(spec.name)
        return endpoint


async def test_a_desktop_left_provisioning_is_resumed_without_a_second_domain(
        db: sessionmaker[Session], guest_image: ImageDisk) -> None:
    fake = BrokerKilledAfterCreate()
    calls = HostCalls({fake.uri: fake}, timeout_s=5)
    try:
        images = ImageStore(db)
        images.publish(fake, "demo", guest_image)
        Catalog(db).save_pool(make_pool(min_ready=1, max_size=4))
        rig = Rig(db=db, fake=fake, calls=calls, catalog=Catalog(db), images=images)
        await run_tick(rig.worker())
        [left] = rig.rows()
        assert (left.state, left.vnc_port, left.error) == ("provisioning", None, None)
        [domain] = fake.list_desktops()
        assert (domain.name, domain.desktop_id) == (left.domain_name, left.id)

        fake.kill = False  # the broker restarts; the host kept its domain
        rig.clock.advance(60)  # the dead broker's lease on the job runs out
        await run_tick(rig.worker())
        [resumed] = rig.rows()
        assert (resumed.id, resumed.state) == (left.id, "ready")
        assert resumed.vnc_port == fake.console_endpoint(left.domain_name).port
        assert [d.name for d in fake.list_desktops()] == [left.domain_name]
        assert fake.defined_count == 1
    finally:
        calls.close()


async def test_a_pool_whose_desktops_never_come_up_pauses_after_three(rig: Rig) -> None:
    rig.catalog.save_pool(make_pool(min_ready=1, max_size=2))
    rig.fake.all_never_up = True  # a broken image: no guest ever answers
    worker = rig.worker()
    for _ in range(12):
        await worker.tick()
        await worker.drain()
        rig.clock.advance(1)
    made = len(rig.rows())
    assert made == 3, rig.rows()  # three were made, failed and removed; then no more
    assert all(r.state == "deleted" for r in rig.rows())
    assert all(r.error and "did not answer" in r.error for r in rig.rows())
    for _ in range(3):
        await worker.tick()
        await worker.drain()
    assert len(rig.rows()) == made
    rig.clock.advance(11 * 60)  # after the pause it tries again
    rig.fake.all_never_up = False
    await worker.tick()
    await worker.drain()
    assert [r.state for r in rig.rows()].count("ready") == 1
