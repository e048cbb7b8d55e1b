"""Runs claimed jobs: each job's steps in order (pools.jobs.steps), each finished step
recorded, the lease renewed while it works.

Failures: a host that does not answer retries the step later (backoff), without limit
and without changing the desktop: nothing is undone because a host did not answer. A
hypervisor error retries a few times, then fails the job and puts a desktop in work in
`error` with the message for the admin (a desktop in use keeps its state and gets the
note).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from pools.calls import HostCalls
from pools.hosts import HostRegistry, Limits
from pools.hypervisor import HostUnavailable, HypervisorError
from pools.images import ImageStore
from pools.jobs.queue import Job, JobKind, JobQueue, LeaseLost, enqueue
from pools.jobs.steps import (
    POWERS_DOWN,
    REGISTRY,
    NoRoom,
    Payload,
    Replace,
    StepContext,
    StepFailed,
    Work,
)
from vdi import desktops
from vdi.audit import AuditLog
from vdi.catalog import desktop_from_row, pool_from_row
from vdi.domain import utc_now
from vdi.models import DesktopRow, PoolRow

log = logging.getLogger(__name__)
# what QEMU says when another process holds a disk's write lock
DISK_IN_USE = 'Failed to get "write" lock'
Failpoint = Callable[[str], None]


def no_failpoint(_step: str) -> None:
    """The production failpoint: nothing happens between a step and its record."""


class JobRunner:
    """Claims due jobs and runs them; at most `per_host_parallel` desktops are made on
    (or migrated to) one host at a time.

    `failpoint` is called with a step's name after the step's hypervisor work is done
    and before the database records it: crash tests make it raise or kill the process
    there."""

    def __init__(self, sessions: sessionmaker[Session], calls: HostCalls, images: ImageStore,
                 *, owner: str, clock: Callable[[], datetime] = utc_now,
                 lease_s: float = 30.0, per_host_parallel: int = 2, max_attempts: int = 3,
                 create_timeout_s: float = 60.0, limits: Limits | None = None,
                 shutdown_grace_s: float = 60.0, failpoint: Failpoint = no_failpoint) -> None:
        self._sessions = sessions
        self.queue = JobQueue(sessions, owner=owner, clock=clock, lease_s=lease_s)
        self.owner = owner
        self._clock = clock
        self._per_host = per_host_parallel
        self._max_attempts = max_attempts
        self._failpoint = failpoint
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._context = StepContext(
            sessions=sessions, calls=calls, images=images,
            registry=HostRegistry(sessions, clock), queue=self.queue,
            limits=limits or Limits(max_provisioning=per_host_parallel),
            create_timeout_s=create_timeout_s, shutdown_grace_s=shutdown_grace_s,
            slot=self._slot, clock=clock)
        self._in_flight: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.finished = asyncio.Event()  # set whenever a job ends (tests, the worker)

    async def dispatch(self) -> int:
        """Start every due job this runner is not running yet. Returns how many."""
        claimed = await asyncio.to_thread(self.queue.claim_due, set(self._in_flight))
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

    def _slot(self, host: str) -> asyncio.Semaphore:
        """The cap on desktops being made on (or moved to) `host` at once. Only the host
        a step works on counts: remaking a down host's desktops elsewhere is not held
        back by the down host's slots."""
        return self._slots.setdefault(host, asyncio.Semaphore(self._per_host))

    async def _execute(self, job: Job) -> None:
        renew = asyncio.create_task(self._renew_forever(job.id))
        try:
            await self._run_steps(job)
        except LeaseLost:
            log.warning("job %d: another broker took it over", job.id)
        except Exception:  # a bug must not kill the runner; the lease lets it retry
            log.exception("job %d (%s %s) crashed", job.id, job.kind, job.desktop_id)
        finally:
            self._in_flight.discard(job.id)
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await renew
            self.finished.set()

    async def _run_steps(self, job: Job) -> None:
        steps = REGISTRY[job.kind]
        names = [name for name, _ in steps]
        index = names.index(job.step) if job.step in names else 0
        payload = dict(job.payload)
        for position, (name, step) in enumerate(steps[index:], start=index):
            try:
                work = await asyncio.to_thread(self._load, job, payload)
                payload = await step(self._context, work)
            except (HostUnavailable, NoRoom) as e:
                await asyncio.to_thread(self._retry_later, job, name, str(e), False)
                return
            except StepFailed as e:
                await asyncio.to_thread(self._fail, job, name, str(e))
                return
            except Replace as e:
                await asyncio.to_thread(self._replace, job, name, str(e))
                return
            except HypervisorError as e:
                if DISK_IN_USE in str(e):
                    # QEMU's lock on the disk: the copy on a host that lost contact still
                    # runs. Starting a second would corrupt the disk; wait until that copy
                    # ends (or its host comes back and keeps it), however long it takes.
                    await asyncio.to_thread(self._retry_later, job, name, str(e), False)
                elif job.attempts + 1 >= self._max_attempts:
                    await asyncio.to_thread(self._fail, job, name, str(e))
                else:
                    await asyncio.to_thread(self._retry_later, job, name, str(e), True)
                return
            self._failpoint(name)
            following = names[position + 1] if position + 1 < len(names) else None
            await asyncio.to_thread(self.queue.finish_step, job, following, payload)
        log.info("job %d: %s %s done", job.id, job.kind, job.desktop_id)

    def _load(self, job: Job, payload: Payload) -> Work:
        """The desktop and its pool, once it is sure the job is still this runner's (a
        superseded or taken-over job must not do another step)."""
        with self._sessions() as s:
            if not self.queue.holds(s, job):
                raise LeaseLost(str(job.id))
            row = s.get(DesktopRow, job.desktop_id)
            if row is None:
                raise StepFailed(f"desktop {job.desktop_id} does not exist")
            prow = s.get(PoolRow, row.pool_id)
            if prow is None:
                raise StepFailed(f"pool {row.pool_id} of desktop {job.desktop_id} "
                                 "does not exist")
            return Work(job=job, desktop=desktop_from_row(row), pool=pool_from_row(prow),
                        payload=payload)

    async def _renew_forever(self, job_id: int) -> None:
        """Keep the lease while the job runs. A database hiccup is retried at the next
        interval (the lease outlives two of them); a lost lease ends the renewing, and
        the step's next write finds it out (LeaseLost)."""
        interval = self.queue.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.queue.renew, job_id)
            except LeaseLost:
                return
            except Exception:
                log.exception("job %d: renewing its lease failed; trying again", job_id)

    def _retry_later(self, job: Job, step: str, message: str, count: bool) -> None:
        with self._sessions.begin() as s:
            delay = self.queue.retry_later(s, job, step, message, count=count)
            if delay is None:
                return  # no longer ours: whoever holds it decides
            # the desktop keeps its state; the note tells the admin (and the assigner)
            desktops.note(s, job.desktop_id, message)
        log.warning("job %d: %s %s, step %s: %s; again in %.0f s", job.id, job.kind,
                    job.desktop_id, step, message, delay)

    def _replace(self, job: Job, step: str, message: str) -> None:
        """The job gives up on its new desktop: removed, with the reason kept in the job
        and the audit log; the worker plans another in its place."""
        log.error("job %d: %s %s: %s; removing it (the pool makes another)", job.id,
                  job.kind, job.desktop_id, message)
        with self._sessions.begin() as s:
            if not self.queue.fail(s, job, step, message):
                return
            if desktops.boot_failed(s, job.desktop_id, message, self._clock()):
                enqueue(s, JobKind.REMOVE, job.desktop_id, self._clock())
                s.add(AuditLog(self._sessions, self._clock).row(
                    actor="worker", role="system", action="desktop-replace",
                    target=job.desktop_id, source="worker", outcome="failed",
                    detail=message))
            else:
                desktops.note(s, job.desktop_id, message)

    def _fail(self, job: Job, step: str, message: str) -> None:
        log.error("job %d: %s %s failed at step %s: %s", job.id, job.kind, job.desktop_id,
                  step, message)
        with self._sessions.begin() as s:
            if not self.queue.fail(s, job, step, message):
                return  # no longer ours (superseded): the desktop is another job's now
            # a desktop in use (a failed restart or migration) keeps its state and user
            if not desktops.mark_error(s, job.desktop_id, message, self._clock()):
                desktops.note(s, job.desktop_id, message)
            if job.kind in POWERS_DOWN:  # it could not be powered down: it still runs
                desktops.power_down_failed(s, job.desktop_id)
