"""Assignment on a real SQLite file (WAL), with real threads racing for desktops."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TypeVar

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.assignment import (
    Assigner,
    AssignmentError,
    DesktopNotReady,
    HostsUnavailable,
    NotEntitled,
    PoolFull,
    PoolNotFound,
)
from tests.conftest import ManualClock
from vdi.catalog import Catalog
from vdi.domain import Desktop, DesktopState, Pool, PoolKind, Principal, Role
from vdi.models import DesktopRow

STAFF = "cn=window-staff,ou=groups,dc=district,dc=example"
T = TypeVar("T")


def make_pool(max_size: int, min_ready: int = 0) -> Pool:
    return Pool(id="window", display_name="Service window", kind=PoolKind.FLOATING,
                image="demo", vcpus=1, memory_mib=128, min_ready=min_ready, max_size=max_size,
                entitled_groups=(STAFF,))


def clerk(n: int, groups: frozenset[str] = frozenset({STAFF})) -> Principal:
    return Principal(username=f"clerk{n}", display_name=f"Clerk {n}",
                     roles=frozenset({Role.STAFF}), groups=groups)


def add_desktops(db: sessionmaker[Session], clock: ManualClock, count: int,
                 state: DesktopState = DesktopState.READY, error: str | None = None,
                 user: str | None = None) -> list[str]:
    """Desktop rows as the worker leaves them; each a second older than the next."""
    ids = []
    with db.begin() as s:
        existing = len(s.scalars(select(DesktopRow.id)).all())
        for n in range(existing, existing + count):
            at = clock() + timedelta(seconds=n)
            ids.append(f"window-{n:04d}")
            s.add(DesktopRow(id=ids[-1], pool_id="window", state=state.value,
                             host_uri="fake:///system", domain_name=f"vdi-window-{n:04d}",
                             image_version=1, assigned_user=user, console_host="127.0.0.1",
                             console_port=5900 + n, error=error, created_at=at, updated_at=at))
    return ids


def race(n: int, call: Callable[[int], T]) -> list[T | AssignmentError]:
    """Run call(0..n-1) in n threads released together; AssignmentErrors are results."""
    barrier = threading.Barrier(n)

    def one(i: int) -> T | AssignmentError:
        barrier.wait()
        try:
            return call(i)
        except AssignmentError as e:
            return e

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


@pytest.fixture
def assigner(db: sessionmaker[Session], clock: ManualClock) -> Assigner:
    return Assigner(db, clock=clock)


def test_fifty_users_race_for_ten_desktops(db: sessionmaker[Session], clock: ManualClock,
                                           assigner: Assigner) -> None:
    Catalog(db).save_pool(make_pool(max_size=10))
    add_desktops(db, clock, 10)
    results = race(50, lambda i: assigner.assign("window", clerk(i)))
    won = [r for r in results if isinstance(r, Desktop)]
    lost = [r for r in results if not isinstance(r, Desktop)]
    assert len(won) == 10
    assert len({d.id for d in won}) == 10
    assert len({d.assigned_user for d in won}) == 10
    assert Counter(type(e) for e in lost) == Counter({PoolFull: 40})
    with db() as s:
        rows = s.scalars(select(DesktopRow)).all()
    assert {r.id: r.assigned_user for r in rows} == {d.id: d.assigned_user for d in won}
    assert {r.state for r in rows} == {"assigned"}


def test_one_users_parallel_requests_get_one_desktop(db: sessionmaker[Session],
                                                     clock: ManualClock,
                                                     assigner: Assigner) -> None:
    Catalog(db).save_pool(make_pool(max_size=10))
    add_desktops(db, clock, 10)
    results = race(10, lambda _i: assigner.assign("window", clerk(7)))
    assert all(isinstance(r, Desktop) for r in results)
    assert len({r.id for r in results if isinstance(r, Desktop)}) == 1
    with db() as s:
        mine = s.scalars(select(DesktopRow.id).where(DesktopRow.assigned_user == "clerk7")).all()
        ready = s.scalars(select(DesktopRow.id).where(DesktopRow.state == "ready")).all()
    assert len(mine) == 1
    assert len(ready) == 9


def test_the_users_existing_desktop_comes_first(db: sessionmaker[Session], clock: ManualClock,
                                                assigner: Assigner) -> None:
    Catalog(db).save_pool(make_pool(max_size=10))
    add_desktops(db, clock, 3)  # older spares, which a claim would pick first
    [mine] = add_desktops(db, clock, 1, DesktopState.ASSIGNED, user="clerk1")
    assert assigner.assign("window", clerk(1)).id == mine
    assert [d.id for d in Catalog(db).desktops("window", [DesktopState.READY])] == [
        "window-0000", "window-0001", "window-0002"]


def test_a_claim_takes_the_oldest_spare_and_records_who_and_when(
        db: sessionmaker[Session], clock: ManualClock, assigner: Assigner) -> None:
    Catalog(db).save_pool(make_pool(max_size=10))
    add_desktops(db, clock, 3)
    desktop = assigner.assign("window", clerk(1))
    assert (desktop.id, desktop.state, desktop.assigned_user) == (
        "window-0000", DesktopState.ASSIGNED, "clerk1")
    assert assigner.current("window", "clerk1") == desktop
    with db() as s:
        row = s.get(DesktopRow, desktop.id)
        assert row is not None and row.assigned_at == clock()


def test_not_entitled(db: sessionmaker[Session], clock: ManualClock,
                      assigner: Assigner) -> None:
    Catalog(db).save_pool(make_pool(max_size=10))
    add_desktops(db, clock, 1)
    outsider = clerk(1, groups=frozenset({"cn=library,ou=groups,dc=district,dc=example"}))
    with pytest.raises(NotEntitled):
        assigner.assign("window", outsider)
    assert len(Catalog(db).desktops("window", [DesktopState.READY])) == 1


def test_unknown_pool(db: sessionmaker[Session], assigner: Assigner) -> None:
    with pytest.raises(PoolNotFound):
        assigner.assign("no-such-pool", clerk(1))


def test_nothing_ready_but_room_to_grow(db: sessionmaker[Session], clock: ManualClock,
                                        assigner: Assigner) -> None:
    Catalog(db).save_pool(make_pool(max_size=3))
    add_desktops(db, clock, 1, DesktopState.ASSIGNED, user="clerk9")
    with pytest.raises(DesktopNotReady):
        assigner.assign("window", clerk(1))


def test_a_desktop_being_prepared_means_not_ready(db: sessionmaker[Session], clock: ManualClock,
                                                 assigner: Assigner) -> None:
    Catalog(db).save_pool(make_pool(max_size=2))
    add_desktops(db, clock, 1, DesktopState.ASSIGNED, user="clerk9")
    add_desktops(db, clock, 1, DesktopState.PROVISIONING)
    with pytest.raises(DesktopNotReady):
        assigner.assign("window", clerk(1))


def test_full_pool(db: sessionmaker[Session], clock: ManualClock, assigner: Assigner) -> None:
    Catalog(db).save_pool(make_pool(max_size=2))
    add_desktops(db, clock, 1, DesktopState.ASSIGNED, user="clerk8")
    add_desktops(db, clock, 1, DesktopState.ASSIGNED, user="clerk9")
    with pytest.raises(PoolFull):
        assigner.assign("window", clerk(1))


def test_every_desktop_being_prepared_is_stuck_on_its_host(
        db: sessionmaker[Session], clock: ManualClock, assigner: Assigner) -> None:
    Catalog(db).save_pool(make_pool(max_size=5))
    add_desktops(db, clock, 2, DesktopState.PROVISIONING,
                 error="host qemu:///system does not answer")
    with pytest.raises(HostsUnavailable):
        assigner.assign("window", clerk(1))
    # one of them still going normally: the user waits for it instead
    add_desktops(db, clock, 1, DesktopState.PROVISIONING)
    with pytest.raises(DesktopNotReady):
        assigner.assign("window", clerk(1))


def test_overview_lists_entitled_pools_with_the_users_desktop(
        db: sessionmaker[Session], clock: ManualClock, assigner: Assigner) -> None:
    Catalog(db).save_pool(make_pool(max_size=10))
    other = Pool(id="library", display_name="Library", kind=PoolKind.FLOATING, image="demo",
                 vcpus=1, memory_mib=128, min_ready=0, max_size=2,
                 entitled_groups=("cn=library,ou=groups,dc=district,dc=example",))
    Catalog(db).save_pool(other)
    add_desktops(db, clock, 2)
    assert [(p.id, d) for p, d in assigner.overview(clerk(1))] == [("window", None)]
    mine = assigner.assign("window", clerk(1))
    assert [(p.id, d) for p, d in assigner.overview(clerk(1))] == [("window", mine)]
    assert [(p.id, d) for p, d in assigner.overview(clerk(2))] == [("window", None)]
    outsider = clerk(3, groups=frozenset({"cn=elsewhere,ou=groups,dc=district,dc=example"}))
    assert assigner.overview(outsider) == []
