"""Waiting clerks are demand, served first come, first served (broker.assignment with
pools.waiters and the pool worker), on a real SQLite database.

The morning storm: 60 clerks ask a pool of at most 12 that keeps 3 spares. The same case
runs on FakeHypervisor and on the real libvirtd (12 real guests booting at once under
TCG, each ready only when its agent answers); the other cases on the fake."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.assignment import Assigner, DesktopNotReady, PoolFull, Queued
from pools.calls import HostCalls
from pools.fake_hypervisor import FakeHypervisor
from pools.hypervisor import Hypervisor, HypervisorError, ImageDisk
from pools.images import ImageStore
from pools.waiters import WAIT_FRESH
from pools.worker import PoolWorker
from tests.conftest import ManualClock
from tests.pools.test_worker import PREFIX, clerk, make_pool
from vdi.catalog import Catalog
from vdi.domain import Desktop
from vdi.models import DesktopRow

Outcome = Desktop | DesktopNotReady | PoolFull
REAL_BOOT_TIMEOUT_S = 900


class Storm:
    def __init__(self, db: sessionmaker[Session], image: ImageDisk,
                 host: Hypervisor | None = None, prefix: str = PREFIX) -> None:
        self.db = db
        self.clock = ManualClock()
        self.host = host or FakeHypervisor()
        self.calls = HostCalls({self.host.uri: self.host}, timeout_s=60)
        images = ImageStore(db)
        images.publish(self.host, prefix + "demo", image)
        # twelve TCG guests booting at once on two cores: room for that in the timeout
        Catalog(db).save_pool(replace(make_pool(min_ready=3, max_size=12,
                                                image=prefix + "demo"),
                                      boot_timeout_s=REAL_BOOT_TIMEOUT_S))
        # the per-host cap is not what this test is about: room for the whole pool
        self.worker = PoolWorker(db, self.calls, images, domain_prefix=prefix,
                                 interval_s=1.0, clock=self.clock, per_host_parallel=12)
        self.assigner = Assigner(db, clock=self.clock)

    def ask(self, n: int) -> Outcome:
        self.clock.advance(0.01)
        try:
            return self.assigner.assign("window", clerk(n))
        except (DesktopNotReady, PoolFull) as e:
            return e

    def states(self) -> list[str]:
        with self.db() as s:
            return sorted(s.scalars(select(DesktopRow.state).where(
                DesktopRow.pool_id == "window")))


@pytest.fixture
def storm(db: sessionmaker[Session], guest_image: ImageDisk) -> Iterator[Storm]:
    st = Storm(db, guest_image)
    yield st
    st.calls.close()


@pytest.fixture(params=["fake", pytest.param("libvirt", marks=pytest.mark.real)])
def any_storm(request: pytest.FixtureRequest, db: sessionmaker[Session],
              guest_image: ImageDisk) -> Iterator[Storm]:
    """The storm on the fake, then on the real libvirtd (its guests removed after)."""
    if request.param == "fake":
        st = Storm(db, guest_image)
    else:
        host = request.getfixturevalue("libvirt_host")
        names = request.getfixturevalue("domain_names")
        st = Storm(db, guest_image, host, prefix=names.new("storm") + "-")
    yield st
    if request.param == "libvirt":
        for d in Catalog(db).desktops("window"):  # twelve guests: not left running
            with contextlib.suppress(HypervisorError):
                st.host.destroy_desktop(d.domain_name)
    st.calls.close()


def holders(outcomes: dict[int, Outcome]) -> dict[int, str]:
    return {n: o.id for n, o in outcomes.items() if isinstance(o, Desktop)}


def places(outcomes: dict[int, Outcome], kind: type[Queued]) -> dict[int, int | None]:
    return {n: o.place for n, o in outcomes.items() if isinstance(o, kind)}


async def test_a_storm_of_60_clerks_on_a_pool_of_12(any_storm: Storm) -> None:
    storm = any_storm
    await storm.worker.tick()
    await storm.worker.drain()
    assert storm.states() == ["ready"] * 3
    first = {n: storm.ask(n) for n in range(60)}  # in the order they arrive
    assert sorted(holders(first)) == [0, 1, 2]  # the spares there were
    # the next 9 wait for desktops the pool will make; the rest are told it is full,
    # each with their place in line
    assert places(first, DesktopNotReady) == {n: n - 2 for n in range(3, 12)}
    assert places(first, PoolFull) == {n: n - 2 for n in range(12, 60)}

    # one round of the worker: the pool grows to its max at once, for those waiting
    await storm.worker.tick()
    assert storm.states().count("provisioning") == 9 and len(storm.states()) == 12
    await storm.worker.drain()
    assert storm.states().count("ready") == 9

    # they ask again, the last first: the desktops still go in the order they came
    again = {n: storm.ask(n) for n in reversed(range(3, 60))}
    assert sorted(holders(again)) == list(range(3, 12))
    # (those who asked before the first nine took theirs still had them ahead)
    assert places(again, PoolFull) == {n: n - 2 for n in range(12, 60)}
    assert not places(again, DesktopNotReady)
    later = {n: storm.ask(n) for n in range(12, 60)}
    assert places(later, PoolFull) == {n: n - 11 for n in range(12, 60)}
    got = {**holders(first), **holders(again)}
    assert len(set(got.values())) == 12  # no desktop went to two clerks
    with storm.db() as s:
        users = [u for u in s.scalars(select(DesktopRow.assigned_user)) if u]
    assert sorted(users) == sorted(f"clerk{n}" for n in range(12))

    # a clerk logs off: the reverted desktop goes to the first in line, whoever asks first
    storm.assigner.log_off("window", "clerk0")
    await storm.worker.tick()
    await storm.worker.drain()
    assert storm.states().count("ready") == 1
    for n in reversed(range(13, 60)):
        assert isinstance(storm.ask(n), PoolFull)
    assert isinstance(storm.ask(12), Desktop)


async def test_a_clerk_who_stops_asking_loses_their_place(storm: Storm) -> None:
    await storm.worker.tick()
    await storm.worker.drain()
    for n in range(3):
        assert isinstance(storm.ask(n), Desktop)
    left, stays = storm.ask(3), storm.ask(4)
    assert isinstance(left, DesktopNotReady) and left.place == 1
    assert isinstance(stays, DesktopNotReady) and stays.place == 2
    storm.clock.advance(WAIT_FRESH.total_seconds() / 2)
    assert isinstance(storm.ask(4), DesktopNotReady)  # clerk 4 keeps asking; 3 does not
    storm.clock.advance(WAIT_FRESH.total_seconds() / 2 + 1)
    now_first = storm.ask(4)
    assert isinstance(now_first, DesktopNotReady) and now_first.place == 1
    back = storm.ask(3)  # back after their place lapsed: at the end of the line
    assert isinstance(back, DesktopNotReady) and back.place == 2


def test_spare_plan_counts_waiting_clerks() -> None:
    from pools.worker import SparePlan

    pool = make_pool(min_ready=3, max_size=12)
    assert SparePlan.for_pool(pool, ready=0, provisioning=0, live=3, waiting=57).add == 9
    assert SparePlan.for_pool(pool, ready=0, provisioning=2, live=5, waiting=2).add == 3
    assert SparePlan.for_pool(pool, ready=3, provisioning=0, live=3, waiting=0).add == 0


