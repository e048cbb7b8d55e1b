"""Floating vs dedicated pools, image releases and persisted jobs, against FakeHypervisor
(its contract is checked against libvirtd in test_hypervisor_contract.py) and a real
SQLite database. The same behaviour against real libvirtd: tests/e2e/test_pool_kinds.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.assignment import Assigner, NothingToLogOff
from pools.calls import HostCalls
from pools.fake_hypervisor import FakeHypervisor
from pools.hypervisor import HostUnavailable, ImageDisk, file_digest
from pools.images import ImageStore, ReleaseError
from pools.jobs.queue import JobKind, JobState
from pools.worker import PoolWorker
from tests.conftest import ManualClock
from tests.pools.test_worker import PREFIX, clerk, make_pool
from vdi.catalog import Catalog
from vdi.cli import main as vdi_main
from vdi.domain import Desktop, DesktopState, Pool, PoolKind, utc_now
from vdi.models import DesktopRow, JobRow


def rebuilt(image: ImageDisk, tmp: Path, name: str, marker: bytes) -> ImageDisk:
    """A copy of the built image with other bytes: another build, another digest (the
    fake host reads no more of it)."""
    out = tmp / f"{name}.qcow2"
    out.write_bytes(image.path.read_bytes() + marker)
    return replace(image, path=out, digest=file_digest(out))


class Rig:
    def __init__(self, db: sessionmaker[Session], guest_image: ImageDisk, tmp: Path) -> None:
        self.db = db
        self.fake = FakeHypervisor()
        self.calls = HostCalls({self.fake.uri: self.fake}, timeout_s=5)
        self.images = ImageStore(db)
        self.catalog = Catalog(db)
        self.clock = ManualClock()
        self.assigner = Assigner(db, clock=self.clock)
        self.v1, _ = self.images.publish(self.fake, "demo", guest_image)
        self.images.release("demo", self.v1, by="test")
        self.guest_image = guest_image
        self.tmp = tmp
        self.worker = self.new_worker()

    def new_worker(self) -> PoolWorker:
        """A new worker, as a (re)started broker makes one."""
        return PoolWorker(self.db, self.calls, self.images,
                          domain_prefix=PREFIX, interval_s=1.0, clock=self.clock,
                          job_lease_s=30)

    async def settle(self, rounds: int = 4) -> None:
        """Tick until the worker has nothing left to do now."""
        for _ in range(rounds):
            await self.worker.tick()
            await self.worker.drain()

    def publish_new_build(self, marker: bytes) -> int:
        version, _ = self.images.publish(
            self.fake, "demo", rebuilt(self.guest_image, self.tmp, marker.decode(), marker))
        return version

    def desktops(self, pool_id: str = "window") -> list[Desktop]:
        return self.catalog.desktops(pool_id)

    def row(self, desktop_id: str) -> DesktopRow:
        with self.db() as s:
            row = s.get(DesktopRow, desktop_id)
            assert row is not None
            return row

    def jobs(self) -> list[JobRow]:
        with self.db() as s:
            return list(s.scalars(select(JobRow).order_by(JobRow.id)))


@pytest.fixture
def rig(db: sessionmaker[Session], guest_image: ImageDisk, tmp_path: Path) -> Iterator[Rig]:
    r = Rig(db, guest_image, tmp_path)
    yield r
    r.calls.close()


def pool(kind: PoolKind = PoolKind.FLOATING, pool_id: str = "window", **changes: object
         ) -> Pool:
    base = make_pool(min_ready=1, max_size=3, pool_id=pool_id)
    values = {**base.__dict__, "kind": kind, **changes}
    return Pool(**values)


# --- floating and dedicated across log-off -------------------------------------------


async def test_floating_log_off_reverts_the_desktop_and_returns_it_to_the_pool(rig: Rig) -> None:
    rig.catalog.save_pool(pool(PoolKind.FLOATING))
    await rig.settle()
    mine = rig.assigner.assign("window", clerk(1))
    clone_before = rig.fake.domains[mine.domain_name].disk_serial
    done = rig.assigner.log_off("window", "clerk1")
    assert done.reverted and done.desktop.id == mine.id
    row = rig.row(mine.id)
    assert (row.state, row.assigned_user) == (DesktopState.RECLAIMING.value, None)
    [job] = [j for j in rig.jobs() if j.kind == JobKind.REVERT]
    assert (job.desktop_id, job.state) == (mine.id, JobState.PENDING.value)
    await rig.settle()
    row = rig.row(mine.id)
    assert (row.state, row.assigned_user, row.error) == (DesktopState.READY.value, None, None)
    assert rig.fake.domains[mine.domain_name].disk_serial != clone_before  # a fresh clone
    assert rig.jobs()[-1].state == JobState.DONE.value
    # the next clerk gets a clean desktop; the first one, on coming back, another or this
    again = rig.assigner.assign("window", clerk(2))
    assert again.state is DesktopState.ASSIGNED


async def test_dedicated_log_off_keeps_the_desktop_and_its_disk(rig: Rig) -> None:
    rig.catalog.save_pool(pool(PoolKind.DEDICATED))
    await rig.settle()
    mine = rig.assigner.assign("window", clerk(1))
    disk = rig.fake.domains[mine.domain_name].disk_serial
    done = rig.assigner.log_off("window", "clerk1")
    assert not done.reverted
    assert rig.row(mine.id).state == DesktopState.ASSIGNED.value
    assert not [j for j in rig.jobs() if j.desktop_id == mine.id and j.kind != JobKind.PROVISION]
    await rig.settle()
    back = rig.assigner.assign("window", clerk(1))
    assert back.id == mine.id
    assert rig.fake.domains[mine.domain_name].disk_serial == disk  # never reverted


async def test_log_off_without_a_desktop_is_refused(rig: Rig) -> None:
    rig.catalog.save_pool(pool(PoolKind.FLOATING))
    await rig.settle()
    with pytest.raises(NothingToLogOff):
        rig.assigner.log_off("window", "clerk9")
    mine = rig.assigner.assign("window", clerk(1))
    rig.assigner.log_off("window", "clerk1")
    with pytest.raises(NothingToLogOff):  # twice: the second finds nothing
        rig.assigner.log_off("window", "clerk1")
    assert len([j for j in rig.jobs() if j.desktop_id == mine.id
                and j.kind == JobKind.REVERT]) == 1


# --- image versions: rollout, pinned test pool, rollback -------------------------------


async def test_new_release_replaces_spares_at_once_and_desktops_in_use_at_log_off(
        rig: Rig) -> None:
    rig.catalog.save_pool(pool(PoolKind.FLOATING, min_ready=2, max_size=4))
    await rig.settle()
    in_use = rig.assigner.assign("window", clerk(1))
    await rig.settle()
    assert {d.image_version for d in rig.desktops()} == {rig.v1}
    v2 = rig.publish_new_build(b"v2")
    assert v2 == rig.v1 + 1
    await rig.settle()
    assert {d.image_version for d in rig.desktops()} == {rig.v1}  # published, not released
    rig.images.release("demo", v2, by="admin")
    await rig.settle()
    spares = [d for d in rig.desktops() if d.state is DesktopState.READY]
    assert len(spares) == 2 and {d.image_version for d in spares} == {v2}
    assert rig.row(in_use.id).image_version == rig.v1  # the clerk keeps working undisturbed
    assert rig.row(in_use.id).state == DesktopState.ASSIGNED.value
    rig.assigner.log_off("window", "clerk1")
    await rig.settle()
    assert rig.row(in_use.id).image_version == v2
    assert {d.image_version for d in rig.desktops()} == {v2}
    # rolling back works the same way
    assert rig.images.rollback("demo", by="admin") == (v2, rig.v1)
    await rig.settle()
    assert {d.image_version for d in rig.desktops()} == {rig.v1}
    disk_of = {d.id: rig.fake.domains[d.domain_name].image_disk for d in rig.desktops()}
    assert all(str(path).find(f"-v{rig.v1}-") > 0 for path in disk_of.values())


async def test_a_version_tried_on_a_test_pool_first(rig: Rig) -> None:
    rig.catalog.save_pool(pool(PoolKind.FLOATING, pool_id="window"))
    rig.catalog.save_pool(pool(PoolKind.FLOATING, pool_id="trial"))
    await rig.settle()
    v2 = rig.publish_new_build(b"trial")
    rig.catalog.save_pool(pool(PoolKind.FLOATING, pool_id="trial", image_version=v2))
    await rig.settle()
    assert {d.image_version for d in rig.desktops("trial")} == {v2}
    assert {d.image_version for d in rig.desktops("window")} == {rig.v1}


async def test_dedicated_desktops_are_never_recomposed(rig: Rig) -> None:
    rig.catalog.save_pool(pool(PoolKind.DEDICATED))
    await rig.settle()
    mine = rig.assigner.assign("window", clerk(1))
    await rig.settle()
    v2 = rig.publish_new_build(b"v2")
    rig.images.release("demo", v2, by="admin")
    rig.assigner.log_off("window", "clerk1")
    await rig.settle()
    assert rig.row(mine.id).image_version == rig.v1
    assert rig.row(mine.id).state == DesktopState.ASSIGNED.value


def test_release_and_rollback_refuse_what_does_not_exist(rig: Rig) -> None:
    with pytest.raises(ReleaseError, match="no published version 7"):
        rig.images.release("demo", 7, by="admin")
    with pytest.raises(ReleaseError, match="no version older"):
        rig.images.rollback("demo", by="admin")
    with pytest.raises(ReleaseError, match="no released version"):
        rig.images.rollback("other", by="admin")


# --- jobs survive a dead broker, a dead host, a failing hypervisor -------------------


async def test_a_job_of_a_dead_broker_is_resumed_after_its_lease(rig: Rig) -> None:
    rig.catalog.save_pool(pool(PoolKind.FLOATING))
    await rig.settle()
    mine = rig.assigner.assign("window", clerk(1))
    rig.assigner.log_off("window", "clerk1")
    # a broker claims the revert job and dies after destroying the domain
    dead = rig.new_worker()
    [claimed] = await_claim(dead)
    with rig.db.begin() as s:
        job = s.get(JobRow, claimed)
        assert job is not None and job.state == JobState.RUNNING.value
        job.step = "create"  # it finished "destroy" and recorded it
    rig.fake.destroy_desktop(mine.domain_name)
    await rig.worker.tick()  # a live broker: the lease still holds, hands off
    await rig.worker.drain()
    assert rig.row(mine.id).state == DesktopState.RECLAIMING.value
    rig.clock.advance(31)
    await rig.settle()
    assert rig.row(mine.id).state == DesktopState.READY.value
    assert [d.name for d in rig.fake.list_desktops()].count(mine.domain_name) == 1


def await_claim(worker: PoolWorker) -> list[int]:
    jobs = worker.jobs.queue.claim_due()  # claim only: the broker dies before running anything
    return [j.id for j in jobs]


async def test_a_host_that_does_not_answer_delays_the_job_and_undoes_nothing(
        rig: Rig) -> None:
    rig.catalog.save_pool(pool(PoolKind.FLOATING))
    await rig.settle()
    mine = rig.assigner.assign("window", clerk(1))
    rig.assigner.log_off("window", "clerk1")
    rig.fake.down = True
    await rig.settle()
    row = rig.row(mine.id)
    assert row.state == DesktopState.RECLAIMING.value
    assert row.error is not None and "does not answer" in row.error
    [job] = [j for j in rig.jobs() if j.kind == JobKind.REVERT]
    assert job.state == JobState.PENDING.value and job.attempts == 0
    assert job.not_before > rig.clock()
    rig.fake.down = False
    await rig.settle()  # not yet due
    assert rig.row(mine.id).state == DesktopState.RECLAIMING.value
    rig.clock.advance(120)
    await rig.settle()
    assert rig.row(mine.id).state == DesktopState.READY.value


async def test_desktops_left_in_work_without_a_job_get_one(rig: Rig) -> None:
    rig.catalog.save_pool(pool(PoolKind.FLOATING))
    await rig.settle()
    [spare] = rig.desktops()
    with rig.db.begin() as s:  # as a database from before jobs existed would have it
        row = s.get(DesktopRow, spare.id)
        assert row is not None
        row.state = DesktopState.RECLAIMING.value
    await rig.settle()
    assert rig.row(spare.id).state == DesktopState.READY.value
    assert [j.kind for j in rig.jobs() if j.desktop_id == spare.id] == [
        JobKind.PROVISION.value, JobKind.REVERT.value]


def test_host_unavailable_is_what_the_fake_raises_when_down(rig: Rig) -> None:
    rig.fake.down = True
    with pytest.raises(HostUnavailable):
        rig.fake.list_desktops()


async def test_an_admin_removal_deletes_domain_and_disk_and_the_pool_refills(
        rig: Rig, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig.catalog.save_pool(pool(PoolKind.DEDICATED))
    await rig.settle()
    mine = rig.assigner.assign("window", clerk(1))
    for name in list(os.environ):  # the command reads only the file below
        if name.startswith("VDI_"):
            monkeypatch.delenv(name)
    config = tmp_path / "vdi.toml"
    config.write_text(f'state_dir = "{tmp_path}"\ndatabase_url = "{db_url}"\n',
                      encoding="utf-8")
    assert vdi_main(["--config", str(config), "desktop-remove", mine.id, "--yes"]) == 0
    rig.clock.now = max(rig.clock.now, utc_now())  # the command's job is due on its clock
    await rig.settle()
    assert rig.row(mine.id).state == DesktopState.DELETED.value
    assert mine.domain_name not in rig.fake.domains and mine.domain_name not in rig.fake.disks
    assert [d.state for d in rig.desktops() if d.id != mine.id] == [DesktopState.READY]
