"""Assignment of pooled desktops to users: exactly once under concurrency.

The claim is one conditional UPDATE of the oldest spare, picked with
`FOR UPDATE SKIP LOCKED` on PostgreSQL (SQLite ignores FOR UPDATE; its write lock
serialises the statement instead), and the unique constraint (pool_id, assigned_user)
stops one user from holding two desktops of a pool even when two of their requests race.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Self

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from broker.errors import BrokerError
from broker.roles import entitled
from pools import waiters
from pools.hosts import Limits, fits, host_from_row, host_loads
from pools.jobs.queue import ACTIVE, JobKind, enqueue
from vdi import desktops
from vdi.catalog import desktop_from_row, pool_from_row
from vdi.domain import ConsoleKind, Desktop, DesktopState, Pool, PoolKind, Power, Principal, utc_now
from vdi.models import ClaimRow, DesktopRow, HostRow, JobRow, PoolRow

# states that still count against a pool's max_size
LIVE_STATES = (DesktopState.PROVISIONING, DesktopState.READY, DesktopState.ASSIGNED,
               DesktopState.RECLAIMING, DesktopState.ERROR, DesktopState.MAINTENANCE)
CLAIM_ATTEMPTS = 8

class AssignmentError(BrokerError):
    """Base: the user gets no desktop; `code` is stable for the API."""

    code = "assignment_failed"


class PoolNotFound(AssignmentError):
    code = "pool_not_found"


class NotEntitled(AssignmentError):
    code = "not_entitled"


class Queued:
    """A refusal that tells the clerk their place in the pool's queue (1: next)."""

    place: int | None = None

    def at(self, place: int) -> Self:
        self.place = place
        return self


class PoolFull(Queued, AssignmentError):
    """Every desktop of the pool is in use and the pool is at max_size (with `place`:
    the clerk waits in the queue for one to come free)."""

    code = "pool_full"


class HostsUnavailable(AssignmentError):
    """No spare, and the desktops being prepared are stuck because their host does not
    answer: the user should hear that, not wait forever."""

    code = "host_unavailable"


class NoCapacity(AssignmentError):
    """The pool may grow, but no host that answers has room for another desktop."""

    code = "no_capacity"


class DesktopNotReady(Queued, AssignmentError):
    """No spare right now, but the pool may grow: one is being prepared (with `place`:
    the clerk's place among those waiting for it)."""

    code = "desktop_starting"


class ConsoleUnsupported(AssignmentError):
    """The pool's (or the desktop's) console kind has no relay in this broker."""

    code = "console_unsupported"


class NothingToLogOff(AssignmentError):
    """The user holds no desktop in that pool."""

    code = "no_desktop"


@dataclass(frozen=True)
class LogOff:
    desktop: Desktop
    reverted: bool  # floating: the desktop goes back to the pool through a fresh clone


class Assigner:
    def __init__(self, sessions: sessionmaker[Session],
                 clock: Callable[[], datetime] = utc_now, limits: Limits | None = None) -> None:
        self._sessions = sessions
        self._clock = clock
        self._limits = limits or Limits()

    def assign(self, pool_id: str, who: Principal,
               consoles: Collection[ConsoleKind] | None = None) -> Desktop:
        """The user's desktop in this pool: their existing one, else a claimed spare.
        Raises PoolNotFound, NotEntitled (same outward answer as not found), PoolFull,
        DesktopNotReady; ConsoleUnsupported, before anything is claimed, when the pool's
        console kind is not among `consoles` (None: any). Blocks on the database."""
        with self._sessions() as s:
            prow = s.get(PoolRow, pool_id)
            if prow is None:
                raise PoolNotFound(pool_id)
            pool = pool_from_row(prow)
            if not entitled(pool, who.groups):
                raise NotEntitled(pool_id)
            if consoles is not None and pool.console not in consoles:
                raise ConsoleUnsupported(pool.console.value)
            mine = self._current(s, pool_id, who.username)
        if mine is not None:
            if mine.power is not Power.ON:  # shut down or suspended while unused
                self._power_on(mine)
                raise DesktopNotReady(pool_id)
            return mine
        username = who.username
        place: int | None = None
        for _ in range(CLAIM_ATTEMPTS):
            got = self._claim_in_turn(pool_id, username)
            if isinstance(got, Desktop):
                return got
            place = got
            # lost the race for that spare, or this user's other request won
            mine = self.current(pool_id, username)
            if mine is not None:
                return mine
            if place is not None or not self._spare_exists(pool_id):
                break
        raise self._why_none(pool_id, place or 1)

    def log_off(self, pool_id: str, username: str) -> LogOff:
        """End the user's use of their desktop in this pool.

        Floating: one compare-and-set takes it from the user (assigned -> reclaiming) and,
        in the same transaction, asks for a revert: a fresh clone of the pool's image,
        then back to the spares. Dedicated: the desktop stays the user's, untouched (the
        broker never reverts or deletes it without an admin). Raises PoolNotFound,
        NothingToLogOff."""
        now = self._clock()
        with self._sessions.begin() as s:
            prow = s.get(PoolRow, pool_id)
            if prow is None:
                raise PoolNotFound(pool_id)
            pool = pool_from_row(prow)
            row = s.scalars(select(DesktopRow).where(
                DesktopRow.pool_id == pool_id, DesktopRow.assigned_user == username,
                DesktopRow.state == DesktopState.ASSIGNED.value)).first()
            if row is None:
                raise NothingToLogOff(pool_id)
            desktop = desktop_from_row(row)
            if pool.persistent:
                return LogOff(desktop, reverted=False)
            if not desktops.log_off(s, row.id, username, now):
                raise NothingToLogOff(pool_id)
            enqueue(s, JobKind.REVERT, row.id, now)
            return LogOff(desktop, reverted=True)

    def _power_on(self, desktop: Desktop) -> None:
        """Start the clerk's desktop again (its disk as they left it; a suspended one
        resumes where it was), unless a job is already at work on it."""
        now = self._clock()
        with self._sessions.begin() as s:
            busy = s.scalar(select(JobRow.id).where(JobRow.desktop_id == desktop.id,
                                                    JobRow.state.in_(ACTIVE)).limit(1))
            if busy is None:
                enqueue(s, JobKind.RESTART, desktop.id, now)

    def current(self, pool_id: str, username: str) -> Desktop | None:
        with self._sessions() as s:
            return self._current(s, pool_id, username)

    def overview(self, who: Principal) -> list[tuple[Pool, Desktop | None]]:
        """The pools `who` is entitled to, each with their current desktop there (or None),
        in one read."""
        with self._sessions() as s:
            pools = [p for p in (pool_from_row(r) for r in
                                 s.scalars(select(PoolRow).order_by(PoolRow.id)))
                     if entitled(p, who.groups)]
            if not pools:
                return []
            mine = {row.pool_id: desktop_from_row(row) for row in s.scalars(
                select(DesktopRow).where(
                    DesktopRow.pool_id.in_([p.id for p in pools]),
                    DesktopRow.assigned_user == who.username,
                    DesktopRow.state == DesktopState.ASSIGNED.value))}
        return [(p, mine.get(p.id)) for p in pools]

    @staticmethod
    def _current(s: Session, pool_id: str, username: str) -> Desktop | None:
        row = s.scalars(select(DesktopRow).where(
            DesktopRow.pool_id == pool_id, DesktopRow.assigned_user == username,
            DesktopRow.state == DesktopState.ASSIGNED.value)).first()
        return desktop_from_row(row) if row else None

    def _claim_in_turn(self, pool_id: str, username: str) -> Desktop | int | None:
        """In one transaction: the clerk is (still) in the pool's queue; if fewer clerks
        are ahead than there are ready spares, they claim the oldest spare (one statement,
        vdi.desktops.claim_spare) and leave the queue. Returns the desktop claimed, else
        their place in the queue (1: next), or None when the spare went to someone else
        meanwhile or this user's other request won (the caller looks)."""
        now = self._clock()
        try:
            with self._sessions.begin() as s:
                since = waiters.join(s, pool_id, username, now)
                before = waiters.ahead(s, pool_id, username, since, now)
                ready = s.scalar(select(func.count()).select_from(DesktopRow).where(
                    DesktopRow.pool_id == pool_id,
                    DesktopRow.state == DesktopState.READY.value)) or 0
                if ready <= before:  # every spare is owed to a clerk who came first
                    return before + 1
                desktop = desktops.claim_spare(s, pool_id, username, now)
                if desktop is None:
                    return None
                s.add(ClaimRow(pool_id=pool_id, at=now))  # the spare forecast's history
                waiters.leave(s, pool_id, username)
                return desktop
        except IntegrityError:
            return None  # this user's other request won; `current` finds it

    def _spare_exists(self, pool_id: str) -> bool:
        with self._sessions() as s:
            n = s.scalar(select(func.count()).select_from(DesktopRow).where(
                DesktopRow.pool_id == pool_id, DesktopRow.state == DesktopState.READY.value))
            return bool(n)

    def _why_none(self, pool_id: str, place: int) -> AssignmentError:
        """Why the clerk at `place` in the queue gets no desktop now."""
        with self._sessions() as s:
            prow = s.get(PoolRow, pool_id)
            assert prow is not None
            # a desktop in error that a job is removing (its guest never came up) is
            # going: its place is the pool's again
            going = select(JobRow.desktop_id).where(JobRow.state.in_(ACTIVE))
            live = s.scalar(select(func.count()).select_from(DesktopRow).where(
                DesktopRow.pool_id == pool_id,
                DesktopRow.state.in_([st.value for st in LIVE_STATES]),
                ~((DesktopRow.state == DesktopState.ERROR.value)
                  & DesktopRow.id.in_(going)))) or 0
            # being made, or (floating) being reverted: a desktop is on its way
            coming = [DesktopState.PROVISIONING.value] + (
                [] if prow.kind == PoolKind.DEDICATED.value else [DesktopState.RECLAIMING.value])
            starting = list(s.scalars(select(DesktopRow.error).where(
                DesktopRow.pool_id == pool_id, DesktopRow.state.in_(coming))))
            usable = s.scalar(select(func.count()).select_from(HostRow).where(
                HostRow.status == "up", HostRow.maintenance.is_(False),
                *([HostRow.uri.in_(prow.hosts)] if prow.hosts else [])))
            known = s.scalar(select(func.count()).select_from(HostRow))
            in_use = s.scalar(select(func.count()).select_from(DesktopRow).where(
                DesktopRow.pool_id == pool_id,
                DesktopRow.state == DesktopState.ASSIGNED.value)) or 0
            pool = pool_from_row(prow)
            loads = host_loads(s, [host_from_row(r) for r in s.scalars(select(HostRow))])
            room = any(fits(ld, pool, self._limits) for ld in loads.values())
        if place > prow.max_size - in_use:
            # more clerks ahead than the pool can ever hold at once: the pool is full,
            # and they keep their place for a desktop coming free
            return PoolFull(pool_id).at(place)
        if live >= prow.max_size and not starting:
            return PoolFull(pool_id).at(place)
        if starting and all(err for err in starting):
            return HostsUnavailable(pool_id)  # the worker noted a failure on each of them
        if not starting and known and not usable:
            return HostsUnavailable(pool_id)  # no host answers: nothing can be made
        if not starting and known and not room:
            return NoCapacity(pool_id)  # the worker cannot place another one anywhere
        return DesktopNotReady(pool_id).at(place)
