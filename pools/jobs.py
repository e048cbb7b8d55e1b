"""Hypervisor work as persisted, idempotent steps (the `jobs` table).

A job is written in the same transaction as the desktop state change that asks for it
(a spare planned, a floating desktop logged off), so the database never says "being
reverted" without the work to do it. A runner claims a due job with a lease, runs its
steps in order and records each finished step; it renews the lease while it works. A
broker killed half-way leaves a job `running` with a lease that runs out: any broker
(the same one restarted) then claims it and runs the unfinished step again. Every step
is idempotent, so running one twice does no harm.

Failures: a host that does not answer retries the step later (backoff), without limit
and without changing the desktop: nothing is undone because a host did not answer. A
hypervisor error retries a few times, then fails the job and puts the desktop in
`error` with the message for the admin.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from pools.calls import HostCalls
from pools.hosts import HostRegistry, Limits, host_loads, place
from pools.hypervisor import DesktopSpec, DomainNotFound, HostUnavailable, HypervisorError
from pools.images import ImageNotPublished, ImageStore
from vdi.catalog import pool_from_row
from vdi.db import rows_changed
from vdi.domain import DesktopState, Pool, utc_now
from vdi.models import DesktopRow, JobRow, PoolRow

log = logging.getLogger(__name__)


class JobKind(enum.StrEnum):
    PROVISION = "provision"  # a new desktop: clone, define, start
    REVERT = "revert"  # a floating desktop back to its pool's image: a fresh clone
    REMOVE = "remove"  # the domain and its disk deleted, the row kept as `deleted`
    RELOCATE = "relocate"  # a floating desktop remade on another host (its host is down)
    RESTART = "restart"  # a dedicated desktop started again, its disk kept (elsewhere
    #                      if its host cannot take it and the storage is shared)
    MIGRATE = "migrate"  # a running dedicated desktop live-migrated off its host
    SHUT_DOWN = "shut_down"  # a dedicated desktop powered off while unused (idle policy)
    SUSPEND = "suspend"  # a dedicated desktop's memory saved to disk while unused


class JobState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


STEPS: dict[JobKind, tuple[str, ...]] = {
    JobKind.PROVISION: ("create", "ready"),
    JobKind.REVERT: ("destroy", "place", "create", "ready"),
    JobKind.REMOVE: ("destroy", "forget"),
    JobKind.RELOCATE: ("release", "place", "wipe", "create", "ready"),
    JobKind.RESTART: ("place", "create", "resume"),
    JobKind.MIGRATE: ("place", "migrate", "resume"),
    JobKind.SHUT_DOWN: ("power_off",),
    JobKind.SUSPEND: ("suspend",),
}
# kinds that power a desktop down: if they fail, it is still on
POWERS_DOWN = (JobKind.SHUT_DOWN, JobKind.SUSPEND)
# kinds that keep the desktop's disk: a new host must see the same storage
KEEPS_DISK = (JobKind.RESTART, JobKind.MIGRATE)
ACTIVE = (JobState.PENDING.value, JobState.RUNNING.value)
# what QEMU says when another process holds a disk's write lock
DISK_IN_USE = 'Failed to get "write" lock'
# Failpoint for the crash tests: the broker process kills itself (SIGKILL) right after
# this step's hypervisor work is done and before the database records it. Never set in
# production; read once at start-up.
KILL_AFTER_STEP = os.environ.get("VDI_FAILPOINT_KILL_AFTER_STEP", "")
# the desktop states a job may take to `ready` (or `error`)
IN_WORK = (DesktopState.PROVISIONING.value, DesktopState.RECLAIMING.value)


def enqueue(s: Session, kind: JobKind, desktop_id: str, now: datetime,
            payload: dict[str, Any] | None = None) -> JobRow:
    """Add a job in the caller's transaction (together with the state change it serves)."""
    job = JobRow(kind=kind.value, desktop_id=desktop_id, state=JobState.PENDING.value,
                 step=STEPS[kind][0], attempts=0, payload=dict(payload or {}),
                 not_before=now, created_at=now, updated_at=now)
    s.add(job)
    return job


@dataclass(frozen=True)
class Job:
    id: int
    kind: JobKind
    desktop_id: str
    step: str
    attempts: int
    payload: dict[str, Any]


class LeaseLost(Exception):
    """Another runner took the job over (this one was too slow to renew its lease)."""


class StepFailed(Exception):
    """The step cannot succeed by retrying (e.g. the image is not published)."""


class NoRoom(Exception):
    """No host can take the desktop now; the step is tried again later."""


class JobRunner:
    """Claims due jobs and runs them; at most `per_host_parallel` desktops are made on
    (or migrated to) one host at a time."""

    def __init__(self, sessions: sessionmaker[Session], calls: HostCalls, images: ImageStore,
                 *, owner: str, clock: Callable[[], datetime] = utc_now,
                 lease_s: float = 30.0, per_host_parallel: int = 2, max_attempts: int = 3,
                 create_timeout_s: float = 60.0, limits: Limits | None = None,
                 shutdown_grace_s: float = 60.0) -> None:
        self._sessions = sessions
        self._calls = calls
        self._images = images
        self._registry = HostRegistry(sessions, clock)
        self._limits = limits or Limits(max_provisioning=per_host_parallel)
        self.owner = owner
        self._clock = clock
        self._lease = timedelta(seconds=lease_s)
        self._per_host = per_host_parallel
        self._max_attempts = max_attempts
        self._create_timeout_s = create_timeout_s
        self._shutdown_grace_s = shutdown_grace_s
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._in_flight: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.finished = asyncio.Event()  # set whenever a job ends (tests, the worker)

    # -- claiming ---------------------------------------------------------------------

    async def dispatch(self) -> int:
        """Start every due job this runner is not running yet. Returns how many."""
        claimed = await asyncio.to_thread(self._claim_due)
        for job in claimed:
            self._in_flight.add(job.id)
            task = asyncio.create_task(self._execute(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(claimed)

    async def drain(self) -> None:
        """Wait for the jobs started so far (tests and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _claim_due(self) -> list[Job]:
        now = self._clock()
        with self._sessions() as s:
            due = list(s.scalars(select(JobRow.id).where(or_(
                (JobRow.state == JobState.PENDING.value) & (JobRow.not_before <= now),
                (JobRow.state == JobState.RUNNING.value) & (JobRow.lease_until < now),
            )).order_by(JobRow.id).limit(100)))
        jobs = []
        for job_id in due:
            if job_id in self._in_flight:
                continue
            with self._sessions.begin() as s:
                row = s.scalars(
                    update(JobRow).where(JobRow.id == job_id, or_(
                        (JobRow.state == JobState.PENDING.value) & (JobRow.not_before <= now),
                        (JobRow.state == JobState.RUNNING.value) & (JobRow.lease_until < now)))
                    .values(state=JobState.RUNNING.value, lease_owner=self.owner,
                            lease_until=now + self._lease, updated_at=now)
                    .returning(JobRow).execution_options(synchronize_session=False)).first()
                if row is not None and row.desktop_id is not None:
                    jobs.append(Job(id=row.id, kind=JobKind(row.kind), desktop_id=row.desktop_id,
                                    step=row.step, attempts=row.attempts,
                                    payload=dict(row.payload or {})))
        return jobs

    # -- running ----------------------------------------------------------------------

    async def _execute(self, job: Job) -> None:
        renew = asyncio.create_task(self._renew_forever(job.id))
        try:
            await self._run_steps(job)
        except LeaseLost:
            log.warning("job %d: another broker took it over", job.id)
        except StepFailed as e:  # the desktop or its pool is gone
            await asyncio.to_thread(self._fail, job, job.step, str(e))
        except Exception:  # a bug must not kill the runner; the lease lets it retry
            log.exception("job %d (%s %s) crashed", job.id, job.kind, job.desktop_id)
        finally:
            self._in_flight.discard(job.id)
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await renew
            self.finished.set()

    async def _run_steps(self, job: Job) -> None:
        steps = STEPS[job.kind]
        index = steps.index(job.step) if job.step in steps else 0
        payload = dict(job.payload)
        for step in steps[index:]:
            try:
                payload = await self._step(job, step, payload)
            except (HostUnavailable, NoRoom) as e:
                await asyncio.to_thread(self._retry_later, job, step, str(e), count=False)
                return
            except StepFailed as e:
                await asyncio.to_thread(self._fail, job, step, str(e))
                return
            except HypervisorError as e:
                if DISK_IN_USE in str(e):
                    # QEMU's lock on the disk: the copy on a host that lost contact still
                    # runs. Starting a second would corrupt the disk; wait until that copy
                    # ends (or its host comes back and keeps it), however long it takes.
                    await asyncio.to_thread(self._retry_later, job, step, str(e), count=False)
                    return
                if job.attempts + 1 >= self._max_attempts:
                    await asyncio.to_thread(self._fail, job, step, str(e))
                else:
                    await asyncio.to_thread(self._retry_later, job, step, str(e), count=True)
                return
            if step == KILL_AFTER_STEP:  # a test's failpoint: die before recording it
                os.kill(os.getpid(), signal.SIGKILL)
            following = steps[steps.index(step) + 1:]
            await asyncio.to_thread(self._finish_step, job, following[0] if following else None,
                                    payload)
        log.info("job %d: %s %s done", job.id, job.kind, job.desktop_id)

    async def _step(self, job: Job, step: str, payload: dict[str, Any]) -> dict[str, Any]:
        desktop, pool = await asyncio.to_thread(self._load, job.desktop_id, job)
        if step == "destroy":
            await self._calls.run(desktop.host_uri,
                                  lambda h: h.destroy_desktop(desktop.domain_name))
            return payload
        if step == "create":
            # a restart makes the domain on the chosen host but moves the desktop's record
            # there only once it runs (until then its old home may still run it)
            target = payload.get("host", desktop.host_uri)
            version = payload.get("version")
            if version is None:  # chosen once: a retried create must not switch versions
                if job.kind is JobKind.RESTART and desktop.image_version:
                    version = desktop.image_version  # its disk was made from that one
                else:
                    version = await asyncio.to_thread(self._images.target_version, pool,
                                                      target)
                payload = {**payload, "version": version}
                await asyncio.to_thread(self._save_payload, job, payload)
            try:
                version, files = await asyncio.to_thread(
                    self._images.files, target, pool.image, version or None)
            except ImageNotPublished as e:
                raise StepFailed(str(e)) from e
            spec = DesktopSpec(name=desktop.domain_name, desktop_id=desktop.id, pool_id=pool.id,
                               vcpus=pool.vcpus, memory_mib=pool.memory_mib, image=files,
                               # a clerk's dedicated desktop restarted: its disk or nothing
                               disk_must_exist=job.kind is JobKind.RESTART
                               and desktop.assigned_user is not None)
            async with self._slot(target):  # the per-host cap on desktops being made
                endpoint = await self._calls.run(
                    target, lambda h: h.create_desktop(spec),
                    timeout_s=max(self._calls.timeout_s, self._create_timeout_s))
            return {**payload, "version": version, "vnc_host": endpoint.host,
                    "vnc_port": endpoint.port}
        if step == "ready":
            await asyncio.to_thread(self._mark_ready, job, payload)
            return payload
        if step == "place":
            if "host" in payload:  # chosen before a crash: keep it
                return payload
            host = await asyncio.to_thread(self._place, job, desktop, pool)
            return {**payload, "host": host, "from_host": desktop.host_uri}
        if step == "release":  # off the old host if it answers; if not, the reconciler
            try:                # removes it when the host is back
                await self._calls.run(desktop.host_uri,
                                      lambda h: h.destroy_desktop(desktop.domain_name))
            except HostUnavailable as e:
                return {**payload, "released": False, "release_error": str(e)[:500]}
            return payload
        if step == "wipe":  # a leftover disk of that name (shared storage) must not be reused
            await self._calls.run(desktop.host_uri,
                                  lambda h: h.destroy_desktop(desktop.domain_name))
            return payload
        if step == "migrate":
            async with self._slot(payload["host"]):  # an incoming desktop counts there
                await self._migrate(desktop.domain_name, payload["from_host"], payload["host"])
            return payload
        if step == "resume":
            host = payload.get("host", desktop.host_uri)
            endpoint = await self._calls.run(
                host, lambda h: h.graphics_endpoint(desktop.domain_name))
            await asyncio.to_thread(self._resume, job, host, endpoint.host, endpoint.port)
            return payload
        if step == "power_off":
            grace = self._shutdown_grace_s
            with contextlib.suppress(DomainNotFound):  # gone: off already
                await self._calls.run(desktop.host_uri,
                                      lambda h: h.shut_down_desktop(desktop.domain_name, grace),
                                      timeout_s=max(self._calls.timeout_s, grace + 30))
            return payload
        if step == "suspend":
            with contextlib.suppress(DomainNotFound):
                await self._calls.run(desktop.host_uri,
                                      lambda h: h.suspend_desktop(desktop.domain_name),
                                      timeout_s=max(self._calls.timeout_s, 300))
            return payload
        if step == "forget":
            await asyncio.to_thread(self._forget, job)
            return payload
        raise StepFailed(f"unknown step {step!r}")

    def _slot(self, host: str) -> asyncio.Semaphore:
        """The cap on desktops being made on (or moved to) `host` at once. Only the host
        a step works on counts: remaking a down host's desktops elsewhere is not held
        back by the down host's slots."""
        return self._slots.setdefault(host, asyncio.Semaphore(self._per_host))

    async def _migrate(self, name: str, source: str, dest: str) -> None:
        if source == dest:
            return
        target = await asyncio.to_thread(self._registry.host, dest)
        if target is None:
            raise StepFailed(f"host {dest} is not registered")
        try:
            await self._calls.run(source, lambda h: h.migrate_desktop(
                name, dest, target.graphics_listen), timeout_s=max(self._calls.timeout_s, 300))
        except DomainNotFound:
            # gone from the source: done already (a broker died before recording it)?
            await self._calls.run(dest, lambda h: h.graphics_endpoint(name))

    # -- database side ----------------------------------------------------------------

    def _place(self, job: Job, desktop: DesktopRow, pool: Pool) -> str:
        """Where the desktop goes: its own host if that still takes desktops (a revert,
        a restart), else the best other one; for a kept disk, one sharing the storage."""
        hosts = self._registry.hosts()
        by_uri = {h.uri: h for h in hosts}
        current = by_uri.get(desktop.host_uri)
        stays = job.kind in (JobKind.REVERT, JobKind.RESTART) and current is not None and (
            current.accepts_desktops and (not pool.hosts or current.uri in pool.hosts)) and (
            job.kind is JobKind.RESTART
            or current.uri in self._images.hosts_ready_for(pool, [current.uri]))
        if stays:
            return desktop.host_uri
        if job.kind in KEEPS_DISK:
            if current is None or not current.shared_storage:
                raise NoRoom(f"desktop {desktop.id} keeps its disk on {desktop.host_uri}, "
                             "which shares it with no other host: it waits for that host")
            hosts = [h for h in hosts if h.shared_storage]
        if job.kind not in KEEPS_DISK:  # a new clone needs the image there
            ready = self._images.hosts_ready_for(pool, [h.uri for h in hosts])
            hosts = [h for h in hosts if h.uri in ready]
        with self._sessions.begin() as s:
            loads = host_loads(s, hosts)
            chosen = place(pool, loads.values(), self._limits, avoid=desktop.host_uri)
            if chosen is None:
                raise NoRoom(f"no host has room for desktop {desktop.id} now")
            if job.kind not in KEEPS_DISK:  # a migration or restart moves it when it runs
                s.execute(update(DesktopRow).where(DesktopRow.id == desktop.id).values(
                    host_uri=chosen.host.uri, updated_at=self._clock()))
            return chosen.host.uri

    def _resume(self, job: Job, host: str, vnc_host: str, vnc_port: int) -> None:
        with self._sessions.begin() as s:
            s.execute(update(DesktopRow).where(DesktopRow.id == job.desktop_id).values(
                host_uri=host, vnc_host=vnc_host, vnc_port=vnc_port, error=None,
                power="on", updated_at=self._clock()))

    def _load(self, desktop_id: str, job: Job) -> tuple[DesktopRow, Pool]:
        """The desktop and its pool, once it is sure the job is still this runner's (a
        superseded or taken-over job must not do another step)."""
        with self._sessions() as s:
            if s.scalar(select(JobRow.id).where(self._mine(job))) is None:
                raise LeaseLost(str(job.id))
            row = s.get(DesktopRow, desktop_id)
            if row is None:
                raise StepFailed(f"desktop {desktop_id} does not exist")
            prow = s.get(PoolRow, row.pool_id)
            if prow is None:
                raise StepFailed(f"pool {row.pool_id} of desktop {desktop_id} does not exist")
            s.expunge(row)
            return row, pool_from_row(prow)

    def _mine(self, job: Job) -> Any:
        return (JobRow.id == job.id) & (JobRow.lease_owner == self.owner) & (
            JobRow.state == JobState.RUNNING.value)

    def _renew(self, job_id: int) -> None:
        now = self._clock()
        with self._sessions.begin() as s:
            done = rows_changed(s.execute(update(JobRow).where(
                JobRow.id == job_id, JobRow.lease_owner == self.owner,
                JobRow.state == JobState.RUNNING.value).values(
                lease_until=now + self._lease, updated_at=now)))
        if not done:
            raise LeaseLost(str(job_id))

    async def _renew_forever(self, job_id: int) -> None:
        """Keep the lease while the job runs. A database hiccup is retried at the next
        interval (the lease outlives two of them); a lost lease ends the renewing, and
        the step's next write finds it out (LeaseLost)."""
        interval = self._lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self._renew, job_id)
            except LeaseLost:
                return
            except Exception:
                log.exception("job %d: renewing its lease failed; trying again", job_id)

    def _save_payload(self, job: Job, payload: dict[str, Any]) -> None:
        with self._sessions.begin() as s:
            if not rows_changed(s.execute(update(JobRow).where(self._mine(job)).values(
                    payload=payload, updated_at=self._clock()))):
                raise LeaseLost(str(job.id))

    def _finish_step(self, job: Job, next_step: str | None, payload: dict[str, Any]) -> None:
        now = self._clock()
        values: dict[str, Any] = {"payload": payload, "updated_at": now, "error": None}
        if next_step is None:
            values.update(state=JobState.DONE.value, finished_at=now, lease_owner=None,
                          lease_until=None)
        else:
            values["step"] = next_step
        with self._sessions.begin() as s:
            mine = update(JobRow).where(self._mine(job))
            if not rows_changed(s.execute(mine.values(**values))):
                raise LeaseLost(str(job.id))

    def _retry_later(self, job: Job, step: str, message: str, *, count: bool) -> None:
        now = self._clock()
        attempts = job.attempts + (1 if count else 0)
        delay = min(60.0, 2.0 * 2 ** min(attempts, 5))
        log.warning("job %d: %s %s, step %s: %s; again in %.0f s", job.id, job.kind,
                    job.desktop_id, step, message, delay)
        with self._sessions.begin() as s:
            s.execute(update(JobRow).where(self._mine(job)).values(
                state=JobState.PENDING.value, step=step, attempts=attempts,
                error=message[:2000], lease_owner=None, lease_until=None,
                not_before=now + timedelta(seconds=delay), updated_at=now))
            # the desktop keeps its state; the note tells the admin (and the assigner)
            s.execute(update(DesktopRow).where(DesktopRow.id == job.desktop_id).values(
                error=message[:2000], updated_at=now))

    def _fail(self, job: Job, step: str, message: str) -> None:
        now = self._clock()
        log.error("job %d: %s %s failed at step %s: %s", job.id, job.kind, job.desktop_id,
                  step, message)
        with self._sessions.begin() as s:
            s.execute(update(JobRow).where(self._mine(job)).values(
                state=JobState.FAILED.value, step=step, attempts=job.attempts + 1,
                error=message[:2000], lease_owner=None, lease_until=None, finished_at=now,
                updated_at=now))
            s.execute(update(DesktopRow).where(
                DesktopRow.id == job.desktop_id, DesktopRow.state.in_(IN_WORK)).values(
                state=DesktopState.ERROR.value, error=message[:2000], updated_at=now))
            # a desktop in use (a failed restart or migration) keeps its state and user
            s.execute(update(DesktopRow).where(
                DesktopRow.id == job.desktop_id, DesktopRow.state.not_in(IN_WORK)).values(
                error=message[:2000], updated_at=now))
            if job.kind in POWERS_DOWN:  # it could not be powered down: it still runs
                s.execute(update(DesktopRow).where(DesktopRow.id == job.desktop_id)
                          .values(power="on"))

    def _mark_ready(self, job: Job, payload: dict[str, Any]) -> None:
        now = self._clock()
        with self._sessions.begin() as s:
            s.execute(update(DesktopRow).where(
                DesktopRow.id == job.desktop_id, DesktopRow.state.in_(IN_WORK)).values(
                state=DesktopState.READY.value, vnc_host=payload.get("vnc_host"),
                vnc_port=payload.get("vnc_port"), image_version=payload.get("version", 0),
                assigned_user=None, assigned_at=None, last_input_at=None,
                last_disconnect_at=None, console_since=None, console_seen_at=None,
                warned_at=None, warning_deadline=None, error=None, updated_at=now))

    def _forget(self, job: Job) -> None:
        now = self._clock()
        with self._sessions.begin() as s:
            s.execute(update(DesktopRow).where(DesktopRow.id == job.desktop_id).values(
                state=DesktopState.DELETED.value, assigned_user=None, vnc_host=None,
                vnc_port=None, error=None, updated_at=now))


def active_job_desktops(s: Session) -> set[str]:
    """Desktops that have a pending or running job."""
    return {d for d in s.scalars(select(JobRow.desktop_id).where(JobRow.state.in_(ACTIVE)))
            if d is not None}
