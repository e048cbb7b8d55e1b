"""The `jobs` table: what work there is, and who holds it.

A job is written in the same transaction as the desktop state change that asks for it
(a spare planned, a floating desktop logged off), so the database never says "being
reverted" without the work to do it. A runner claims due jobs with a lease and renews
it while it works; each finished step is recorded. A broker killed half-way leaves a job
`running` with a lease that runs out: any broker (the same one restarted) then claims it
and runs the unfinished step again (every step is idempotent).

Several brokers share the table: a claim is one statement that picks due jobs with
`FOR UPDATE SKIP LOCKED` on PostgreSQL (SQLite has no FOR UPDATE; its write lock
serialises the statement) and takes them with a compare-and-set, so two runners never
hold one job.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from vdi.db import rows_changed
from vdi.domain import utc_now
from vdi.models import JobRow

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


# The steps of each kind, in order, by the names stored in `jobs.step` (rows written by
# an older broker name these: renaming one needs a migration). pools.jobs.steps holds
# what each name does.
STEP_NAMES: dict[JobKind, tuple[str, ...]] = {
    JobKind.PROVISION: ("create", "boot", "ready"),
    JobKind.REVERT: ("destroy", "place", "create", "boot", "ready"),
    JobKind.REMOVE: ("destroy", "forget"),
    JobKind.RELOCATE: ("release", "place", "wipe", "create", "boot", "ready"),
    JobKind.RESTART: ("place", "create", "boot", "resume"),
    JobKind.MIGRATE: ("place", "migrate", "resume"),
    JobKind.SHUT_DOWN: ("power_off",),
    JobKind.SUSPEND: ("suspend",),
}
ACTIVE = (JobState.PENDING.value, JobState.RUNNING.value)
CLAIM_BATCH = 100  # jobs one claim takes at most


class LeaseLost(Exception):
    """Another runner took the job over (this one was too slow to renew its lease), or
    the job was superseded: this runner must not do another step of it."""


@dataclass(frozen=True)
class Job:
    id: int
    kind: JobKind
    desktop_id: str
    step: str
    attempts: int
    payload: dict[str, Any]


def enqueue(s: Session, kind: JobKind, desktop_id: str, now: datetime,
            payload: dict[str, Any] | None = None) -> None:
    """Add a job in the caller's transaction (together with the state change it serves)."""
    s.add(JobRow(kind=kind.value, desktop_id=desktop_id, state=JobState.PENDING.value,
                 step=STEP_NAMES[kind][0], attempts=0, payload=dict(payload or {}),
                 not_before=now, created_at=now, updated_at=now))


def active_job_desktops(s: Session) -> set[str]:
    """Desktops that have a pending or running job."""
    return {d for d in s.scalars(select(JobRow.desktop_id).where(JobRow.state.in_(ACTIVE)))
            if d is not None}


def _due(job: Any, now: datetime) -> ColumnElement[bool]:
    """Pending and due, or running under a lease that ran out (its broker died)."""
    return or_((job.state == JobState.PENDING.value) & (job.not_before <= now),
               (job.state == JobState.RUNNING.value) & (job.lease_until < now))


class JobQueue:
    """One runner's hold on the table: it claims as `owner` and every write it makes
    about a job is conditional on still holding that job's lease."""

    def __init__(self, sessions: sessionmaker[Session], *, owner: str,
                 clock: Callable[[], datetime] = utc_now, lease_s: float = 30.0) -> None:
        self._sessions = sessions
        self.owner = owner
        self._clock = clock
        self.lease = timedelta(seconds=lease_s)

    def claim_due(self, exclude: Collection[int] = ()) -> list[Job]:
        """Take up to CLAIM_BATCH due jobs (oldest first) under a fresh lease, in one
        statement. `exclude`: jobs this runner still runs (their lease may have run out
        while it worked; it must not start them twice). Blocks on the database."""
        now = self._clock()
        other = aliased(JobRow)  # the subquery's own table, not the UPDATE's row
        pick = (select(other.id).where(_due(other, now), other.desktop_id.is_not(None),
                                       *([other.id.not_in(list(exclude))] if exclude else []))
                .order_by(other.id).limit(CLAIM_BATCH).with_for_update(skip_locked=True))
        with self._sessions.begin() as s:
            rows = s.scalars(
                update(JobRow).where(JobRow.id.in_(pick), _due(JobRow, now))
                .values(state=JobState.RUNNING.value, lease_owner=self.owner,
                        lease_until=now + self.lease, updated_at=now)
                .returning(JobRow).execution_options(synchronize_session=False)).all()
            jobs = [Job(id=r.id, kind=JobKind(r.kind), desktop_id=r.desktop_id, step=r.step,
                        attempts=r.attempts, payload=dict(r.payload or {}))
                    for r in rows if r.desktop_id is not None]
        return sorted(jobs, key=lambda j: j.id)

    def mine(self, job: Job) -> ColumnElement[bool]:
        """The job row while this runner still holds it."""
        return (JobRow.id == job.id) & (JobRow.lease_owner == self.owner) & (
            JobRow.state == JobState.RUNNING.value)

    def holds(self, s: Session, job: Job) -> bool:
        return s.scalar(select(JobRow.id).where(self.mine(job))) is not None

    def renew(self, job_id: int) -> None:
        """Extend the lease from now. Raises LeaseLost if the job is no longer ours."""
        now = self._clock()
        with self._sessions.begin() as s:
            done = rows_changed(s.execute(update(JobRow).where(
                JobRow.id == job_id, JobRow.lease_owner == self.owner,
                JobRow.state == JobState.RUNNING.value).values(
                lease_until=now + self.lease, updated_at=now)))
        if not done:
            raise LeaseLost(str(job_id))

    def save_payload(self, job: Job, payload: dict[str, Any]) -> None:
        """Record a choice a step made (e.g. the image version) before acting on it, so
        a retried step makes the same one. Raises LeaseLost."""
        with self._sessions.begin() as s:
            if not rows_changed(s.execute(update(JobRow).where(self.mine(job)).values(
                    payload=payload, updated_at=self._clock()))):
                raise LeaseLost(str(job.id))

    def finish_step(self, job: Job, next_step: str | None, payload: dict[str, Any]) -> None:
        """The step is done: record the next one (None: the job is done, the lease is
        given back). Raises LeaseLost."""
        now = self._clock()
        values: dict[str, Any] = {"payload": payload, "updated_at": now, "error": None}
        if next_step is None:
            values.update(state=JobState.DONE.value, finished_at=now, lease_owner=None,
                          lease_until=None)
        else:
            values["step"] = next_step
        with self._sessions.begin() as s:
            if not rows_changed(s.execute(update(JobRow).where(self.mine(job))
                                          .values(**values))):
                raise LeaseLost(str(job.id))

    def retry_later(self, s: Session, job: Job, step: str, message: str, *,
                    count: bool) -> float | None:
        """Give the job back to run `step` again after a backoff (in the caller's
        transaction); `count`: the failure counts towards giving up. Returns the delay
        in seconds; None: the job is no longer ours and nothing was written."""
        now = self._clock()
        attempts = job.attempts + (1 if count else 0)
        delay = min(60.0, 2.0 * float(2 ** min(attempts, 5)))
        if not rows_changed(s.execute(update(JobRow).where(self.mine(job)).values(
                state=JobState.PENDING.value, step=step, attempts=attempts,
                error=message[:2000], lease_owner=None, lease_until=None,
                not_before=now + timedelta(seconds=delay), updated_at=now))):
            return None
        return delay

    def fail(self, s: Session, job: Job, step: str, message: str) -> bool:
        """The job gives up at `step` (in the caller's transaction). False: it is no
        longer ours and nothing was written."""
        now = self._clock()
        return bool(rows_changed(s.execute(update(JobRow).where(self.mine(job)).values(
            state=JobState.FAILED.value, step=step, attempts=job.attempts + 1,
            error=message[:2000], lease_owner=None, lease_until=None, finished_at=now,
            updated_at=now))))
