"""Spare planning by several brokers on one real PostgreSQL server: two pool workers
(two engines, as two broker processes have) plan the same pool at once, round after
round, while desktops leave the pool; the pool never holds more than max_size.

The hosts are FakeHypervisor (placement only needs their capacity): what is under test
is the database, where PostgreSQL's READ COMMITTED would let two planners each count
the same free room without the pool's row lock (pools.worker.lock_pool)."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from harness.pg_server import PgServer
from pools.calls import HostCalls
from pools.fake_hypervisor import FakeHypervisor
from pools.images import ImageStore
from pools.worker import COUNTED, PoolWorker
from vdi import desktops
from vdi.catalog import Catalog
from vdi.db import make_engine, session_factory
from vdi.domain import ConsoleEndpoint, ConsoleKind, DesktopState, Pool, PoolKind, utc_now
from vdi.models import DesktopRow

MAX_SIZE = 5
ROUNDS = 300  # per worker
LIVE = [st.value for st in COUNTED]


@pytest.fixture
def engines(pg: PgServer) -> Iterator[list[Engine]]:
    """One engine per broker process (two workers), plus one for the clerks' side."""
    made = [make_engine(pg.url) for _ in range(3)]
    yield made
    for engine in made:
        engine.dispose()


def live_count(db: sessionmaker[Session]) -> int:
    with db() as s:
        return s.scalar(select(func.count()).select_from(DesktopRow).where(
            DesktopRow.pool_id == "window", DesktopRow.state.in_(LIVE))) or 0


def churn_one(db: sessionmaker[Session], rng: random.Random) -> bool:
    """A desktop leaves the pool the way desktops do: made ready, taken back, deleted
    (each step a transition of the state machine). False: none to take."""
    with db() as s:
        made = list(s.scalars(select(DesktopRow.id).where(
            DesktopRow.pool_id == "window",
            DesktopRow.state == DesktopState.PROVISIONING.value)))
    if not made:
        return False
    desktop_id = rng.choice(made)
    now = utc_now()
    with db.begin() as s:
        return (desktops.mark_ready(s, desktop_id,
                                    console=ConsoleEndpoint(ConsoleKind.VNC, "127.0.0.1", 5900),
                                    image_version=1, now=now)
                and desktops.recall_spare(s, desktop_id, now)
                and desktops.mark_deleted(s, desktop_id, now))


def test_two_workers_never_plan_a_pool_past_max_size(engines: list[Engine]) -> None:
    dbs = [session_factory(e) for e in engines]
    with dbs[0].begin() as s:
        s.execute(text("TRUNCATE jobs, desktops, hosts, images, pools, waiters "
                       "RESTART IDENTITY CASCADE"))
    pool = Pool(id="window", display_name="Window", kind=PoolKind.FLOATING, image="demo",
                vcpus=1, memory_mib=128, min_ready=MAX_SIZE, max_size=MAX_SIZE,
                entitled_groups=("cn=staff",))
    Catalog(dbs[0]).save_pool(pool)
    fake = FakeHypervisor(memory_mib=1 << 20, cpus=1024)
    calls = HostCalls({fake.uri: fake}, timeout_s=5)
    workers = [PoolWorker(db, calls, ImageStore(db), domain_prefix="vdi-", interval_s=1,
                          per_host_parallel=1000) for db in dbs[:2]]
    try:
        asyncio.run(workers[0].check_hosts())  # the host registered and up
        assert [h.uri for h in workers[1].monitor.registry.hosts()] == [fake.uri]

        start = threading.Barrier(4)
        planning = threading.Event()
        planning.set()
        seen: list[int] = []
        added = [0, 0]

        def plan(n: int) -> None:
            start.wait()
            for _ in range(ROUNDS):
                added[n] += len(workers[n].plan_spares(pool))
                seen.append(live_count(dbs[n]))

        def take_away() -> int:
            start.wait()
            rng, gone = random.Random(7), 0
            while planning.is_set():
                gone += churn_one(dbs[2], rng)
            return gone

        def observe() -> None:
            start.wait()
            while planning.is_set():
                seen.append(live_count(dbs[2]))

        with ThreadPoolExecutor(4) as ex:
            planners = [ex.submit(plan, n) for n in (0, 1)]
            churner = ex.submit(take_away)
            observer = ex.submit(observe)
            for f in planners:
                f.result(timeout=300)
            planning.clear()
            gone = churner.result(timeout=60)
            observer.result(timeout=60)
    finally:
        calls.close()
    final = live_count(dbs[2])
    assert max(seen) <= MAX_SIZE, f"the pool held {max(seen)} desktops (max {MAX_SIZE})"
    assert final <= MAX_SIZE
    # the race was real: both workers kept refilling what was taken away
    assert gone >= 50, gone
    assert min(added) >= 10, added
    assert sum(added) == gone + final
