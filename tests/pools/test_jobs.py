"""The job queue (pools/jobs/queue.py) on SQLite and on a real PostgreSQL server: claim,
lease, renew, expiry, retry and failure, and two claimers racing for the same jobs;
the runner (pools/jobs/runner.py) with an injected failpoint against FakeHypervisor, on
both (`db_url` here overrides the suite's SQLite-only one, and `db` follows it).

The PostgreSQL server is Debian's, started by deploy/postgres/start-postgres.sh on a
free loopback port (tests/pg_server.py); if it cannot start, those cases fail."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from harness.pg_server import PgServer
from pools.calls import HostCalls
from pools.fake_hypervisor import FakeHypervisor
from pools.hypervisor import ImageDisk
from pools.images import ImageStore
from pools.jobs.queue import STEP_NAMES, JobKind, JobQueue, JobState, LeaseLost, enqueue
from pools.jobs.runner import JobRunner
from pools.jobs.steps import BY_NAME, REGISTRY
from tests.conftest import ManualClock
from vdi import desktops
from vdi.catalog import Catalog
from vdi.db import make_engine, migrate, session_factory
from vdi.domain import DesktopState, Pool, PoolKind
from vdi.models import AuditRow, DesktopRow, JobRow

LEASE_S = 30.0
TABLES = ("jobs", "desktops", "images", "image_versions", "image_releases", "hosts", "pools",
          "waiters")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, migrated database of each kind (PostgreSQL: the module's server with
    every table emptied)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'vdi.sqlite3'}"
        migrate(url)
        return url
    server: PgServer = request.getfixturevalue("pg")
    engine = make_engine(server.url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return server.url


class Brokers:
    """Engines on one database, one per simulated broker process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engines: list[Engine] = []

    def sessions(self) -> sessionmaker[Session]:
        engine = make_engine(self.url)
        self._engines.append(engine)
        return session_factory(engine)

    def close(self) -> None:
        for engine in self._engines:
            engine.dispose()


@pytest.fixture
def brokers(db_url: str) -> Iterator[Brokers]:
    b = Brokers(db_url)
    yield b
    b.close()


def add_jobs(db: sessionmaker[Session], clock: ManualClock, n: int, *,
             due_in_s: float = 0) -> list[int]:
    with db.begin() as s:
        for i in range(n):
            enqueue(s, JobKind.PROVISION, f"d{i}", clock() + timedelta(seconds=due_in_s))
    with db() as s:
        return list(s.scalars(select(JobRow.id).order_by(JobRow.id)))


def job_row(db: sessionmaker[Session], job_id: int) -> JobRow:
    with db() as s:
        row = s.get(JobRow, job_id)
        assert row is not None
        return row


def queue(db: sessionmaker[Session], clock: ManualClock, owner: str) -> JobQueue:
    return JobQueue(db, owner=owner, clock=clock, lease_s=LEASE_S)


# --- the queue, on both databases ----------------------------------------------------------


def test_due_jobs_are_claimed_once_under_a_lease(brokers: Brokers, clock: ManualClock) -> None:
    db = brokers.sessions()
    [first, second] = add_jobs(db, clock, 2)
    [later] = [j for j in add_jobs(db, clock, 1, due_in_s=10) if j not in (first, second)]
    a, b = queue(db, clock, "a"), queue(brokers.sessions(), clock, "b")
    claimed = a.claim_due()
    assert [(j.id, j.kind, j.step, j.attempts) for j in claimed] == [
        (first, JobKind.PROVISION, "create", 0), (second, JobKind.PROVISION, "create", 0)]
    row = job_row(db, first)
    assert (row.state, row.lease_owner, row.lease_until) == (
        JobState.RUNNING.value, "a", clock() + timedelta(seconds=LEASE_S))
    assert b.claim_due() == []  # held, or not due yet
    clock.advance(10)
    assert [j.id for j in b.claim_due()] == [later]  # the others' lease still holds


def test_two_claimers_never_get_the_same_job(brokers: Brokers, clock: ManualClock) -> None:
    """Four brokers claim 600 jobs at once: each job goes to exactly one of them."""
    all_ids = add_jobs(brokers.sessions(), clock, 600)
    claimers = [queue(brokers.sessions(), clock, f"broker{n}") for n in range(4)]
    start = threading.Barrier(len(claimers))

    def claim_all(q: JobQueue) -> list[int]:
        start.wait()
        got: list[int] = []
        while batch := q.claim_due():
            got += [j.id for j in batch]
        return got

    with ThreadPoolExecutor(len(claimers)) as pool:
        results = list(pool.map(claim_all, claimers))
    taken = [job_id for got in results for job_id in got]
    assert sorted(taken) == all_ids  # every job once: none twice, none left
    db = brokers.sessions()
    with db() as s:
        owners = {job_id: owner for job_id, owner in s.execute(
            select(JobRow.id, JobRow.lease_owner))}
    for q, got in zip(claimers, results, strict=True):
        assert {owners[j] for j in got} <= {q.owner}


def test_the_claim_skips_rows_other_claims_hold_on_postgresql(
        pg: PgServer, clock: ManualClock) -> None:
    """A job whose row another broker's claim has locked is skipped, not waited for."""
    engines = [make_engine(pg.url) for _ in range(2)]
    try:
        db, claimer = (session_factory(e) for e in engines)
        with db.begin() as s:
            s.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        first, second = add_jobs(db, clock, 2)
        sent: list[str] = []
        event.listen(engines[1], "before_cursor_execute", lambda *args: sent.append(args[2]))
        with db.begin() as holder:  # another broker's claim, in flight, holds the first
            holder.execute(select(JobRow.id).where(JobRow.id == first).with_for_update())
            with ThreadPoolExecutor(1) as pool:
                got = pool.submit(queue(claimer, clock, "b").claim_due).result(timeout=10)
        assert [j.id for j in got] == [second]
        assert any("FOR UPDATE SKIP LOCKED" in sql for sql in sent)
    finally:
        for engine in engines:
            engine.dispose()


def test_an_expired_lease_is_taken_over_and_the_old_holder_is_shut_out(
        brokers: Brokers, clock: ManualClock) -> None:
    db = brokers.sessions()
    [job_id] = add_jobs(db, clock, 1)
    dead, alive = queue(db, clock, "dead"), queue(brokers.sessions(), clock, "alive")
    [held] = dead.claim_due()
    clock.advance(LEASE_S - 1)
    assert alive.claim_due() == []  # the lease still holds
    clock.advance(2)
    [taken] = alive.claim_due()
    assert (taken.id, taken.step) == (job_id, "create")
    assert job_row(db, job_id).lease_owner == "alive"
    with pytest.raises(LeaseLost):
        dead.renew(job_id)
    with pytest.raises(LeaseLost):
        dead.finish_step(held, "ready", {})
    with pytest.raises(LeaseLost):
        dead.save_payload(held, {"version": 1})
    with db.begin() as s:
        assert dead.retry_later(s, held, "create", "late", count=True) is None
        assert not dead.fail(s, held, "create", "late")
    row = job_row(db, job_id)
    assert (row.state, row.lease_owner, row.step, row.error) == (
        JobState.RUNNING.value, "alive", "create", None)


def test_renewing_keeps_the_job_and_a_runner_never_reclaims_its_own(
        brokers: Brokers, clock: ManualClock) -> None:
    db = brokers.sessions()
    [job_id] = add_jobs(db, clock, 1)
    mine, other = queue(db, clock, "mine"), queue(brokers.sessions(), clock, "other")
    mine.claim_due()
    clock.advance(LEASE_S - 1)
    mine.renew(job_id)
    clock.advance(LEASE_S - 1)
    assert other.claim_due() == []
    clock.advance(2)  # not renewed since: due again, but not for the runner still at it
    assert mine.claim_due(exclude={job_id}) == []
    assert [j.id for j in other.claim_due()] == [job_id]


def test_steps_are_recorded_then_the_job_is_done(brokers: Brokers, clock: ManualClock) -> None:
    db = brokers.sessions()
    [job_id] = add_jobs(db, clock, 1)
    q = queue(db, clock, "a")
    [job] = q.claim_due()
    q.save_payload(job, {"version": 2})
    assert job_row(db, job_id).payload == {"version": 2}
    q.finish_step(job, "ready", {"version": 2, "console_port": 5901})
    row = job_row(db, job_id)
    assert (row.state, row.step, row.payload) == (
        JobState.RUNNING.value, "ready", {"version": 2, "console_port": 5901})
    clock.advance(1)
    q.finish_step(job, None, {"version": 2})
    row = job_row(db, job_id)
    assert (row.state, row.lease_owner, row.lease_until, row.finished_at) == (
        JobState.DONE.value, None, None, clock())
    assert queue(db, clock, "b").claim_due() == []


def test_retry_later_backs_off_and_fail_gives_up(brokers: Brokers,
                                                 clock: ManualClock) -> None:
    db = brokers.sessions()
    [job_id] = add_jobs(db, clock, 1)
    q = queue(db, clock, "a")
    [job] = q.claim_due()
    with db.begin() as s:
        assert q.retry_later(s, job, "create", "host busy", count=True) == 4.0
    row = job_row(db, job_id)
    assert (row.state, row.attempts, row.error, row.lease_owner, row.not_before) == (
        JobState.PENDING.value, 1, "host busy", None, clock() + timedelta(seconds=4))
    clock.advance(3)
    assert q.claim_due() == []  # backing off
    clock.advance(1)
    [again] = q.claim_due()
    assert (again.id, again.attempts, again.step) == (job_id, 1, "create")
    with db.begin() as s:  # a host that does not answer: not counted
        assert q.retry_later(s, again, "create", "no answer", count=False) == 4.0
    clock.advance(4)
    [third] = q.claim_due()
    with db.begin() as s:
        assert q.fail(s, third, "create", "no space left")
    row = job_row(db, job_id)
    assert (row.state, row.attempts, row.error, row.finished_at, row.lease_owner) == (
        JobState.FAILED.value, 2, "no space left", clock(), None)
    clock.advance(3600)
    assert q.claim_due() == []


# --- the steps' registry ------------------------------------------------------------------


def test_every_kind_runs_its_stored_step_names_in_order() -> None:
    assert set(REGISTRY) == set(JobKind)
    for kind, steps in REGISTRY.items():
        assert tuple(name for name, _ in steps) == STEP_NAMES[kind]
        assert all(BY_NAME[name] is fn for name, fn in steps)
    assert {n for names in STEP_NAMES.values() for n in names} == set(BY_NAME)


# --- the runner with an injected failpoint (both databases, FakeHypervisor) ----------------


class Killed(Exception):
    """Stands for the broker process dying at the failpoint."""


@pytest.fixture
def provisioning(db: sessionmaker[Session], clock: ManualClock,
                 guest_image: ImageDisk) -> Iterator[tuple[FakeHypervisor, HostCalls, str]]:
    """A pool on a fake host with its image published and one desktop to be made."""
    fake = FakeHypervisor()
    calls = HostCalls({fake.uri: fake}, timeout_s=5)
    ImageStore(db).publish(fake, "demo", guest_image)
    Catalog(db).save_pool(Pool(id="window", display_name="Window", kind=PoolKind.FLOATING,
                               image="demo", vcpus=1, memory_mib=128, min_ready=0,
                               max_size=4, entitled_groups=("cn=staff",)))
    with db.begin() as s:
        desktops.add_provisioning(s, desktop_id="d1", pool_id="window", host_uri=fake.uri,
                                  domain_name="vdi-d1", now=clock())
        enqueue(s, JobKind.PROVISION, "d1", clock())
    yield fake, calls, "d1"
    calls.close()


def runner(db: sessionmaker[Session], calls: HostCalls, clock: ManualClock, owner: str,
           **kwargs: object) -> JobRunner:
    return JobRunner(db, calls, ImageStore(db), owner=owner, clock=clock, lease_s=LEASE_S,
                     **kwargs)  # type: ignore[arg-type]


def desktop(db: sessionmaker[Session], desktop_id: str) -> DesktopRow:
    with db() as s:
        row = s.get(DesktopRow, desktop_id)
        assert row is not None
        return row


async def test_the_failpoint_sees_each_step_before_it_is_recorded(
        db: sessionmaker[Session], clock: ManualClock,
        provisioning: tuple[FakeHypervisor, HostCalls, str]) -> None:
    _fake, calls, desktop_id = provisioning
    seen: list[tuple[str, str]] = []

    def failpoint(step: str) -> None:
        with db() as s:  # the step's work is done, its record not yet written
            seen.append((step, s.scalars(select(JobRow.step)).one()))

    r = runner(db, calls, clock, "a", failpoint=failpoint)
    assert await r.dispatch() == 1
    await r.drain()
    assert seen == [("create", "create"), ("boot", "boot"), ("ready", "ready")]
    assert desktop(db, desktop_id).state == DesktopState.READY.value


async def test_a_broker_killed_after_create_is_finished_by_the_next_one(
        db: sessionmaker[Session], clock: ManualClock,
        provisioning: tuple[FakeHypervisor, HostCalls, str]) -> None:
    fake, calls, desktop_id = provisioning

    def die_after_create(step: str) -> None:
        if step == "create":
            raise Killed(step)

    doomed = runner(db, calls, clock, "doomed", failpoint=die_after_create)
    await doomed.dispatch()
    await doomed.drain()
    with db() as s:
        job = s.scalars(select(JobRow)).one()
    assert (job.state, job.step, job.lease_owner) == (JobState.RUNNING.value, "create",
                                                      "doomed")
    assert desktop(db, desktop_id).state == DesktopState.PROVISIONING.value
    assert [d.name for d in fake.list_desktops()] == ["vdi-d1"]  # the host made it

    restarted = runner(db, calls, clock, "restarted")
    assert await restarted.dispatch() == 0  # the dead broker's lease still holds
    clock.advance(LEASE_S + 1)
    assert await restarted.dispatch() == 1
    await restarted.drain()
    row = desktop(db, desktop_id)
    assert (row.state, row.console_port) == (DesktopState.READY.value,
                                         fake.console_endpoint("vdi-d1").port)
    assert [d.name for d in fake.list_desktops()] == ["vdi-d1"]
    assert fake.defined_count == 1  # made again over the same domain, not a second one
    with db() as s:
        assert s.scalars(select(JobRow.state)).one() == JobState.DONE.value


async def test_a_job_superseded_during_a_step_stops_without_touching_the_desktop(
        db: sessionmaker[Session], clock: ManualClock,
        provisioning: tuple[FakeHypervisor, HostCalls, str]) -> None:
    _fake, calls, desktop_id = provisioning

    def superseded(step: str) -> None:  # e.g. its host was evacuated meanwhile
        with db.begin() as s:
            s.execute(update(JobRow).values(state=JobState.FAILED.value, lease_owner=None,
                                            error="superseded"))

    r = runner(db, calls, clock, "a", failpoint=superseded)
    await r.dispatch()
    await r.drain()
    with db() as s:
        job = s.scalars(select(JobRow)).one()
    assert (job.state, job.step, job.error) == (JobState.FAILED.value, "create", "superseded")
    row = desktop(db, desktop_id)
    assert (row.state, row.error) == (DesktopState.PROVISIONING.value, None)


# --- ready means up: the boot step ------------------------------------------------------


async def test_a_guest_up_late_is_reset_once_and_then_ready(
        db: sessionmaker[Session], clock: ManualClock,
        provisioning: tuple[FakeHypervisor, HostCalls, str]) -> None:
    fake, calls, desktop_id = provisioning
    fake.late_up["vdi-d1"] = 1  # its first boot hangs; after the reset it comes up
    r = runner(db, calls, clock, "a")
    await r.dispatch()
    await r.drain()
    assert fake.up_waits == ["vdi-d1", "vdi-d1"] and fake.resets == ["vdi-d1"]
    assert desktop(db, desktop_id).state == DesktopState.READY.value


async def test_a_guest_that_never_comes_up_is_replaced_and_never_offered(
        db: sessionmaker[Session], clock: ManualClock,
        provisioning: tuple[FakeHypervisor, HostCalls, str]) -> None:
    fake, calls, desktop_id = provisioning
    fake.never_up.add("vdi-d1")
    seen_states: list[str] = []

    def failpoint(step: str) -> None:
        seen_states.append(desktop(db, desktop_id).state)

    r = runner(db, calls, clock, "a", failpoint=failpoint)
    await r.dispatch()
    await r.drain()
    assert fake.up_waits == ["vdi-d1", "vdi-d1"] and fake.resets == ["vdi-d1"]
    row = desktop(db, desktop_id)
    assert row.state == DesktopState.ERROR.value and row.assigned_user is None
    assert row.error and "did not answer" in row.error and "tried 2 times" in row.error
    assert DesktopState.READY.value not in seen_states  # never offered on the way
    with db() as s:
        jobs = {(j.kind, j.state): j for j in s.scalars(select(JobRow))}
        audit = s.scalars(select(AuditRow).where(AuditRow.action == "desktop-replace")).one()
    failed = jobs[(JobKind.PROVISION.value, JobState.FAILED.value)]
    assert failed.step == "boot" and failed.error and "did not answer" in failed.error
    assert (JobKind.REMOVE.value, JobState.PENDING.value) in jobs
    assert audit.target == desktop_id and audit.outcome == "failed"
    await r.dispatch()  # the remove job: off the host, the row kept as deleted
    await r.drain()
    assert desktop(db, desktop_id).state == DesktopState.DELETED.value
    assert "vdi-d1" not in fake.domains
