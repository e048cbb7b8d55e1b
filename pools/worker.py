"""The pool worker: keeps each pool's spare desktops booted, up to max_size, on the
image version the pool should run.

Each tick plans in the database and leaves the hypervisor work to persisted jobs
(`pools.jobs`): a new spare is a desktop row in `provisioning` plus a provision job, in
one transaction; a floating pool's spare on an outdated image version goes to
`reclaiming` with a revert job. A broker killed half-way resumes the jobs on restart
instead of leaving an orphan or making a second desktop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from pools import waiters
from pools.calls import HostCalls
from pools.failover import HostMonitor
from pools.hosts import Host, Limits, host_loads, place
from pools.images import ImageStore
from pools.jobs.queue import JobKind, active_job_desktops, enqueue
from pools.jobs.runner import Failpoint, JobRunner, no_failpoint
from pools.reclaim import PolicyError
from pools.reclaimer import Reclaimer
from pools.shifts import ReclaimPolicy
from pools.spares import Level, SpareMode, SpareSchedule, spare_level
from vdi import desktops
from vdi.catalog import Catalog
from vdi.domain import DesktopState, Pool, utc_now
from vdi.models import ClaimRow, DesktopRow, JobRow, PoolRow

log = logging.getLogger(__name__)
FORECAST_EVERY = timedelta(seconds=60)
# a spare above the pool's level waits this long for a clerk before it is removed
RETIRE_AFTER = timedelta(minutes=10)
# a pool whose last few new desktops all failed to come up (a broken image) makes no
# more for a while, instead of replacing them as fast as they fail
BOOT_FAILURES_TO_PAUSE = 3
BOOT_PAUSE = timedelta(minutes=10)
COUNTED = (DesktopState.PROVISIONING, DesktopState.READY, DesktopState.ASSIGNED,
           DesktopState.RECLAIMING, DesktopState.ERROR, DesktopState.MAINTENANCE)


@dataclass(frozen=True)
class SparePlan:
    """How many desktops to add to a pool now (pure, for the worker and its tests)."""

    add: int

    @staticmethod
    def for_pool(pool: Pool, ready: int, provisioning: int, live: int,
                 waiting: int = 0) -> SparePlan:
        """Enough to keep min_ready spares with a desktop for each clerk waiting (they
        take the spares as they come up), within max_size."""
        want = pool.min_ready + waiting - ready - provisioning
        room = pool.max_size - live
        return SparePlan(add=max(0, min(want, room)))


def boots_failing(s: Session, pool_id: str, now: datetime) -> bool:
    """The pool's last BOOT_FAILURES_TO_PAUSE jobs that made a desktop all failed at its
    boot, the last of them less than BOOT_PAUSE ago."""
    made = (JobKind.PROVISION.value, JobKind.REVERT.value, JobKind.RELOCATE.value)
    last = s.execute(select(JobRow.state, JobRow.step, JobRow.finished_at)
                     .join(DesktopRow, DesktopRow.id == JobRow.desktop_id)
                     .where(DesktopRow.pool_id == pool_id, JobRow.kind.in_(made),
                            JobRow.finished_at.is_not(None))
                     .order_by(JobRow.finished_at.desc(), JobRow.id.desc())
                     .limit(BOOT_FAILURES_TO_PAUSE)).all()
    return (len(last) == BOOT_FAILURES_TO_PAUSE
            and all(state == "failed" and step == "boot" for state, step, _ in last)
            and last[0][2] is not None and now - last[0][2] < BOOT_PAUSE)


class PoolWorker:
    def __init__(self, sessions: sessionmaker[Session], calls: HostCalls, images: ImageStore,
                 *, domain_prefix: str, interval_s: float,
                 per_host_parallel: int = 2, clock: Callable[[], datetime] = utc_now,
                 job_lease_s: float = 30.0, limits: Limits | None = None,
                 host_check_interval_s: float = 5.0, down_after_s: float = 30.0,
                 reconcile_every_s: float = 60.0, reclaim_every_s: float = 5.0,
                 signal_lag_s: float = 10.0, console_stale_s: float = 60.0,
                 shutdown_grace_s: float = 60.0, failpoint: Failpoint = no_failpoint) -> None:
        """failpoint: handed to the job runner (pools.jobs.runner.JobRunner)."""
        self._sessions = sessions
        self._catalog = Catalog(sessions)
        self._calls = calls
        self._images = images
        self._prefix = domain_prefix
        self._interval = interval_s
        self._clock = clock
        self._limits = limits or Limits(max_provisioning=per_host_parallel)
        self.jobs = JobRunner(sessions, calls, images, owner=new_owner_id(), clock=clock,
                              lease_s=job_lease_s, per_host_parallel=per_host_parallel,
                              limits=self._limits, shutdown_grace_s=shutdown_grace_s,
                              failpoint=failpoint)
        self.reclaimer = Reclaimer(sessions, clock=clock, signal_lag_s=signal_lag_s,
                                   console_stale_s=console_stale_s)
        self._reclaim_every = timedelta(seconds=reclaim_every_s)
        self._reclaimed: datetime | None = None
        self._levels: dict[str, tuple[datetime, Level]] = {}
        self.monitor = HostMonitor(sessions, calls, domain_prefix=domain_prefix,
                                   down_after_s=down_after_s,
                                   reconcile_every_s=reconcile_every_s, clock=clock)
        self._check_every = timedelta(seconds=host_check_interval_s)
        self._checked: datetime | None = None
        self.wake = asyncio.Event()

    async def run(self) -> None:
        """Tick until cancelled. A failing tick is logged and retried, never fatal. The
        hosts are checked by a task of their own: a slow host check (up to its timeout)
        does not hold back the jobs, nor a long tick the checks."""
        await self._check_hosts_logged()  # hosts registered and probed before placing
        watcher = asyncio.create_task(self._watch_hosts())
        try:
            while True:
                try:
                    await self.tick(check_hosts=False)
                except asyncio.CancelledError:
                    raise
                except Exception:  # keep the worker alive; the next tick retries
                    log.exception("pool worker tick failed")
                self.wake.clear()
                self.jobs.finished.clear()
                with contextlib.suppress(TimeoutError):
                    # a finished job may free room for the next one: tick again at once
                    await asyncio.wait_for(_first(self.wake, self.jobs.finished),
                                           self._interval)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch_hosts(self) -> None:
        while True:
            await asyncio.sleep(self._check_every.total_seconds())
            await self._check_hosts_logged()
            self.wake.set()  # a host that went down or came back: plan and dispatch now

    async def _check_hosts_logged(self) -> None:
        try:
            await self.check_hosts()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("checking the hosts failed")

    async def check_hosts(self) -> None:
        """Register the hosts the broker has adapters for, ask each whether it answers
        (down after the bound: its desktops are moved), reconcile when due."""
        await asyncio.to_thread(self._register_known_hosts)
        await self.monitor.check()
        self._checked = self._clock()

    async def tick(self, *, check_hosts: bool = True) -> None:
        """One round of planning and dispatch; with check_hosts (tests, a single-step
        run) the hosts are checked first when the check interval has passed."""
        now = self._clock()
        if check_hosts and (self._checked is None or now - self._checked >= self._check_every):
            await self.check_hosts()
        pools = await asyncio.to_thread(self._catalog.pools)
        for pool in pools:
            new_ids = await asyncio.to_thread(self.plan_spares, pool)
            if new_ids:
                log.info("pool %s: provisioning %d new desktop(s)", pool.id, len(new_ids))
            else:
                retired = await asyncio.to_thread(self._retire_surplus, pool)
                if retired:
                    log.info("pool %s: removing %d spare(s) above its level", pool.id,
                             retired)
            if not pool.persistent:
                stale = await asyncio.to_thread(self._recompose_spares, pool)
                if stale:
                    log.info("pool %s: replacing %d spare(s) on an old image version",
                             pool.id, stale)
        if self._reclaimed is None or now - self._reclaimed >= self._reclaim_every:
            self._reclaimed = now
            await asyncio.to_thread(self.reclaimer.run_once)
            await asyncio.to_thread(self._forget_lapsed_waiters)
        adopted = await asyncio.to_thread(self._adopt_orphans)
        if adopted:
            log.warning("resumed %d desktop(s) left in work without a job", adopted)
        await self.jobs.dispatch()

    async def drain(self) -> None:
        """Wait for the jobs started so far (tests and shutdown)."""
        await self.jobs.drain()

    def _register_known_hosts(self) -> None:
        """Hosts the broker was given an adapter for (the settings' libvirt_uri, tests'
        fakes) get a record if they have none; hosts added as records get an adapter."""
        known = {h.uri: h for h in self.monitor.registry.hosts()}
        for uri, adapter in list(self._calls.hosts.items()):
            if uri not in known:
                self.monitor.registry.add(Host(
                    uri=uri, name=host_name(uri, known.values()),
                    graphics_listen=getattr(adapter, "graphics_listen", "127.0.0.1"),
                    storage_pool=getattr(adapter, "storage_pool", ""),
                    storage_dir=str(getattr(adapter, "storage_dir", "")),
                    log_dir=str(getattr(adapter, "log_dir", ""))))
        for host in known.values():
            self._calls.ensure(host)

    def spare_level(self, s: Session, pool: Pool) -> Level:
        """How many spares the pool keeps ready now: its schedule or forecast, else its
        min_ready. A forecast is worked out at most once a minute (it reads weeks of
        claims)."""
        now = self._clock()
        cached = self._levels.get(pool.id)
        if cached is not None and now - cached[0] < FORECAST_EVERY:
            return cached[1]
        level, forecast = pool_spare_level(s, pool, now)
        if forecast:
            self._levels[pool.id] = (now, level)
        return level

    def _spare_plan(self, s: Session, pool: Pool) -> SparePlan:
        counts: dict[str, int] = {
            state: n for state, n in s.execute(
                select(DesktopRow.state, func.count()).where(DesktopRow.pool_id == pool.id)
                .group_by(DesktopRow.state))}
        ready = counts.get(DesktopState.READY.value, 0)
        # desktops being made or remade become spares: a floating desktop being
        # reverted returns to the pool (a dedicated pool has none of those)
        prov = counts.get(DesktopState.PROVISIONING.value, 0) + (
            0 if pool.persistent else counts.get(DesktopState.RECLAIMING.value, 0))
        live = sum(counts.get(st.value, 0) for st in COUNTED)
        level = self.spare_level(s, pool).min_ready
        return SparePlan.for_pool(replace(pool, min_ready=min(level, pool.max_size)), ready,
                                  prov, live, waiters.waiting(s, pool.id, self._clock()))

    def plan_spares(self, pool: Pool) -> list[str]:
        """One planning round for `pool`: add the desktops (rows in provisioning, each
        with its provision job) that bring it to its spare level, never past max_size.
        Several brokers may plan one pool at once: the count and the inserts run under
        a lock on the pool's row (`lock_pool`), so each plans on what the others added.
        Returns the new desktops' ids. Blocks on the database."""
        hosts = self.monitor.registry.hosts()
        # only hosts that hold the pool's image version (a host added later has none
        # until the image is published there); if none does, the desktop's job fails
        # with "not published" for the admin to see
        holding = self._images.hosts_ready_for(pool, [h.uri for h in hosts])
        if holding:
            hosts = [h for h in hosts if h.uri in holding]
        with self._sessions() as s:  # most ticks have nothing to add: no write lock then
            if not self._spare_plan(s, pool).add:
                return []
            if boots_failing(s, pool.id, self._clock()):
                log.warning("pool %s: its last %d new desktops never came up; no more "
                            "for %d minutes (see `vdi desktops` for why)", pool.id,
                            BOOT_FAILURES_TO_PAUSE, BOOT_PAUSE.seconds // 60)
                return []
        with self._sessions.begin() as s:
            if not lock_pool(s, pool.id):
                return []  # removed meanwhile
            plan = self._spare_plan(s, pool)  # again, under the pool's lock
            if not plan.add:
                return []
            now = self._clock()
            loads = host_loads(s, hosts)
            ids: list[str] = []
            for _ in range(plan.add):
                chosen = place(pool, loads.values(), self._limits)
                if chosen is None:
                    if not ids:
                        log.info("pool %s: no host has room for another desktop now", pool.id)
                    break
                loads[chosen.host.uri] = chosen.plus(pool)
                desktop_id = f"{pool.id}-{secrets.token_hex(4)}"
                desktops.add_provisioning(s, desktop_id=desktop_id, pool_id=pool.id,
                                          host_uri=chosen.host.uri,
                                          domain_name=f"{self._prefix}{desktop_id}", now=now)
                enqueue(s, JobKind.PROVISION, desktop_id, now)
                ids.append(desktop_id)
            return ids

    def _forget_lapsed_waiters(self) -> None:
        with self._sessions.begin() as s:
            waiters.forget_lapsed(s, self._clock())

    def _retire_surplus(self, pool: Pool) -> int:
        """Spares above the pool's level now (the evening after the morning's, or
        desktops returned at log-off) that have waited RETIRE_AFTER unclaimed are
        removed: a ready spare holds no one's work. Desktops being reverted are not
        counted until they are ready again (counting them would retire the rest), nor
        those being made (removing ready spares for them would leave arrivals waiting)."""
        now = self._clock()
        with self._sessions() as s:
            ready = s.scalar(select(func.count()).select_from(DesktopRow).where(
                DesktopRow.pool_id == pool.id,
                DesktopRow.state == DesktopState.READY.value)) or 0
            surplus = ready - self.spare_level(s, pool).min_ready
            if surplus <= 0:
                return 0
            idle = list(s.scalars(select(DesktopRow.id).where(
                DesktopRow.pool_id == pool.id, DesktopRow.state == DesktopState.READY.value,
                DesktopRow.assigned_user.is_(None),
                DesktopRow.updated_at <= now - RETIRE_AFTER)
                .order_by(DesktopRow.updated_at).limit(surplus)))
        retired = 0
        for desktop_id in idle:
            with self._sessions.begin() as s:  # compare-and-set: a clerk may claim it first
                if desktops.recall_spare(s, desktop_id, now):
                    enqueue(s, JobKind.REMOVE, desktop_id, now)
                    retired += 1
        return retired

    def _recompose_spares(self, pool: Pool) -> int:
        """A floating pool's spares on another version than the pool's target are
        reverted onto it at once (compare-and-set: a clerk claiming one first keeps it;
        their desktop is reverted onto the new version when they log off)."""
        with self._sessions() as s:
            spares = list(s.execute(select(DesktopRow.id, DesktopRow.host_uri,
                                           DesktopRow.image_version).where(
                DesktopRow.pool_id == pool.id, DesktopRow.state == DesktopState.READY.value)))
        targets: dict[str, int] = {}
        stale = []
        for desktop_id, host_uri, version in spares:
            if host_uri not in targets:
                targets[host_uri] = self._images.target_version(pool, host_uri)
            if targets[host_uri] and version != targets[host_uri]:
                stale.append(desktop_id)
        done = 0
        for desktop_id in stale:
            with self._sessions.begin() as s:
                now = self._clock()
                if desktops.recall_spare(s, desktop_id, now):
                    enqueue(s, JobKind.REVERT, desktop_id, now)
                    done += 1
        return done

    def _adopt_orphans(self) -> int:
        """Desktops in provisioning or reclaiming with no job to finish them (a database
        from before jobs existed, or a job row lost): give them one."""
        kinds = {DesktopState.PROVISIONING.value: JobKind.PROVISION,
                 DesktopState.RECLAIMING.value: JobKind.REVERT}

        def orphans_in(s: Session) -> list[tuple[str, str]]:
            busy = active_job_desktops(s)
            return [(d, st) for d, st in s.execute(
                select(DesktopRow.id, DesktopRow.state).where(DesktopRow.state.in_(list(kinds))))
                if d not in busy]

        with self._sessions() as s:  # the usual answer is none: no write lock for that
            if not orphans_in(s):
                return 0
        with self._sessions.begin() as s:
            orphans = orphans_in(s)
            now = self._clock()
            for desktop_id, state in orphans:
                enqueue(s, kinds[state], desktop_id, now)
            return len(orphans)


def lock_pool(s: Session, pool_id: str) -> bool:
    """Hold the pool's row until the caller's transaction ends, so that no other broker
    adds desktops to it meanwhile (SELECT ... FOR UPDATE on PostgreSQL; SQLite has no
    row locks, but a write transaction there holds the whole database already). False:
    no such pool."""
    locked = s.scalar(select(PoolRow.id).where(PoolRow.id == pool_id).with_for_update())
    return locked is not None


def pool_spare_level(s: Session, pool: Pool, now: datetime) -> tuple[Level, bool]:
    """The pool's spare level now and whether it came from a forecast. A stored
    schedule or calendar that no longer parses falls back to min_ready (logged)."""
    row = s.get(PoolRow, pool.id)
    if row is None or not row.spare_schedule:
        return Level(pool.min_ready, f"the pool's min_ready ({pool.min_ready})"), False
    try:
        schedule = SpareSchedule.from_json(row.spare_schedule, pool.max_size)
        calendar = ReclaimPolicy.from_json(row.reclaim_policy,
                                           persistent=pool.persistent).calendar
    except (PolicyError, ValueError, TypeError, OverflowError) as e:
        log.error("pool %s: spare schedule unusable (%s): min_ready holds", pool.id, e)
        return Level(pool.min_ready, f"the pool's min_ready ({pool.min_ready}); "
                     f"its schedule is unusable: {e}"), False
    claims: list[datetime] = []
    if schedule.mode is SpareMode.FORECAST:
        since = now - timedelta(weeks=schedule.weeks, days=1)
        claims = list(s.scalars(select(ClaimRow.at).where(ClaimRow.pool_id == pool.id,
                                                          ClaimRow.at >= since)))
    return spare_level(schedule, calendar, pool.min_ready, now, claims), (
        schedule.mode is SpareMode.FORECAST)


def host_name(uri: str, taken: Iterable[Host]) -> str:
    """A readable name for a host known only by its URI: its address, else 'local'."""
    base = urlsplit(uri).hostname or "local"
    base = "".join(c if c.isalnum() else "-" for c in base)[:48] or "local"
    names = {h.name for h in taken}
    name, n = base, 1
    while name in names:
        n += 1
        name = f"{base}-{n}"
    return name


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def new_owner_id() -> str:
    """Who holds a job's lease: this broker process (unique across restarts)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
