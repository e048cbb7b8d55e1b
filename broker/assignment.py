"""Assignment of pooled desktops to users: exactly once under concurrency.

The claim is a conditional UPDATE checked by row count (SQLite ignores FOR UPDATE), and
the unique constraint (pool_id, assigned_user) stops one user from holding two desktops
of a pool even when two of their requests race.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from broker.roles import entitled
from vdi.catalog import desktop_from_row, pool_from_row
from vdi.domain import Desktop, DesktopState, Principal, utc_now
from vdi.models import DesktopRow, PoolRow

# states that still count against a pool's max_size
LIVE_STATES = (DesktopState.PROVISIONING, DesktopState.READY, DesktopState.ASSIGNED,
               DesktopState.RECLAIMING, DesktopState.ERROR, DesktopState.MAINTENANCE)
CLAIM_ATTEMPTS = 8


class AssignmentError(Exception):
    """Base: the user gets no desktop; `code` is stable for the API."""

    code = "assignment_failed"


class PoolNotFound(AssignmentError):
    code = "pool_not_found"


class NotEntitled(AssignmentError):
    code = "not_entitled"


class PoolFull(AssignmentError):
    """Every desktop of the pool is in use and the pool is at max_size."""

    code = "pool_full"


class HostsUnavailable(AssignmentError):
    """No spare, and the desktops being prepared are stuck because their host does not
    answer: the user should hear that, not wait forever."""

    code = "host_unavailable"


class DesktopNotReady(AssignmentError):
    """No spare right now, but the pool may grow: one is being prepared."""

    code = "desktop_starting"


class Assigner:
    def __init__(self, sessions: sessionmaker[Session],
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._sessions = sessions
        self._clock = clock

    def assign(self, pool_id: str, who: Principal) -> Desktop:
        """The user's desktop in this pool: their existing one, else a claimed spare.
        Raises PoolNotFound, NotEntitled (same outward answer as not found), PoolFull,
        DesktopNotReady. Blocks on the database."""
        with self._sessions() as s:
            prow = s.get(PoolRow, pool_id)
            if prow is None:
                raise PoolNotFound(pool_id)
            if not entitled(pool_from_row(prow), who.groups):
                raise NotEntitled(pool_id)
        for _ in range(CLAIM_ATTEMPTS):
            mine = self.current(pool_id, who.username)
            if mine is not None:
                return mine
            claimed = self._claim_spare(pool_id, who.username)
            if claimed is not None:
                return claimed
            if not self._spare_exists(pool_id):
                break
        mine = self.current(pool_id, who.username)
        if mine is not None:
            return mine
        raise self._why_none(pool_id)

    def current(self, pool_id: str, username: str) -> Desktop | None:
        with self._sessions() as s:
            row = s.scalars(select(DesktopRow).where(
                DesktopRow.pool_id == pool_id, DesktopRow.assigned_user == username,
                DesktopRow.state == DesktopState.ASSIGNED.value)).first()
            return desktop_from_row(row) if row else None

    def _claim_spare(self, pool_id: str, username: str) -> Desktop | None:
        now = self._clock()
        try:
            with self._sessions.begin() as s:
                candidate = s.scalars(
                    select(DesktopRow.id)
                    .where(DesktopRow.pool_id == pool_id,
                           DesktopRow.state == DesktopState.READY.value)
                    .order_by(DesktopRow.created_at).limit(1)
                    .with_for_update(skip_locked=True)).first()
                if candidate is None:
                    return None
                result = s.execute(
                    update(DesktopRow)
                    .where(DesktopRow.id == candidate,
                           DesktopRow.state == DesktopState.READY.value,
                           DesktopRow.assigned_user.is_(None))
                    .values(state=DesktopState.ASSIGNED.value, assigned_user=username,
                            assigned_at=now, updated_at=now))
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    return None  # someone else won this one; the caller tries again
                row = s.get(DesktopRow, candidate)
                assert row is not None
                return desktop_from_row(row)
        except IntegrityError:
            return None  # this user's other request won; `current` finds it

    def _spare_exists(self, pool_id: str) -> bool:
        with self._sessions() as s:
            n = s.scalar(select(func.count()).select_from(DesktopRow).where(
                DesktopRow.pool_id == pool_id, DesktopRow.state == DesktopState.READY.value))
            return bool(n)

    def _why_none(self, pool_id: str) -> AssignmentError:
        with self._sessions() as s:
            prow = s.get(PoolRow, pool_id)
            assert prow is not None
            live = s.scalar(select(func.count()).select_from(DesktopRow).where(
                DesktopRow.pool_id == pool_id,
                DesktopRow.state.in_([st.value for st in LIVE_STATES]))) or 0
            starting = list(s.scalars(select(DesktopRow.error).where(
                DesktopRow.pool_id == pool_id,
                DesktopRow.state == DesktopState.PROVISIONING.value)))
        if live >= prow.max_size and not starting:
            return PoolFull(pool_id)
        if starting and all(err for err in starting):
            return HostsUnavailable(pool_id)  # the worker noted a failure on each of them
        return DesktopNotReady(pool_id)
