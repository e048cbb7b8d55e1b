"""What a clerk's pages learn of the idle policy, and the clerk's answer to it.

The desktop page asks for its desktop's status every few seconds: an idle warning with
its deadline (the page counts down), and, once the policy took the desktop back, why.
"I'm still here" counts as input: the warning is withdrawn in the policy's next round
(the page hides it at once). Notices of a reclaim stay until the clerk connects again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from vdi import desktops
from vdi.domain import DesktopState, Power, utc_now
from vdi.models import DesktopRow, ReclaimRow

NOTICE_FOR = timedelta(hours=24)  # older reclaims are not news to the clerk


@dataclass(frozen=True)
class Notice:
    id: int
    at: datetime
    action: str  # pools.reclaim.Action
    cause: str  # pools.reclaim.Cause
    since: datetime

    def as_json(self) -> dict[str, Any]:
        """For the pages: they say, in the clerk's language and time, what happened."""
        return {"id": self.id, "at": self.at.isoformat(), "action": self.action,
                "cause": self.cause, "since": self.since.isoformat(),
                "seconds": int((self.at - self.since).total_seconds())}


@dataclass(frozen=True)
class Warning:
    warned_at: datetime
    deadline: datetime


@dataclass(frozen=True)
class DesktopStatus:
    desktop_id: str | None  # None: the clerk holds no desktop in the pool now
    power: Power | None
    warning: Warning | None
    notice: Notice | None


class IdleNotices:
    def __init__(self, sessions: sessionmaker[Session],
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._sessions = sessions
        self._clock = clock

    def status(self, username: str, pool_id: str) -> DesktopStatus:
        """The clerk's desktop in the pool, its warning, the latest unseen reclaim."""
        with self._sessions() as s:
            row = s.scalars(select(DesktopRow).where(
                DesktopRow.pool_id == pool_id, DesktopRow.assigned_user == username,
                DesktopRow.state == DesktopState.ASSIGNED.value)).first()
            notice = self._notices(s, username, [pool_id]).get(pool_id)
            if row is None:
                return DesktopStatus(None, None, None, notice)
            warning = (Warning(row.warned_at, row.warning_deadline)
                       if row.warned_at is not None and row.warning_deadline is not None
                       else None)
            # a reclaim that only powered the desktop down or disconnected it is news
            # until the clerk connects again; then it is seen
            return DesktopStatus(row.id, Power(row.power), warning, notice)

    def notices(self, username: str, pool_ids: list[str]) -> dict[str, Notice]:
        with self._sessions() as s:
            return self._notices(s, username, pool_ids)

    def _notices(self, s: Session, username: str, pool_ids: list[str]) -> dict[str, Notice]:
        if not pool_ids:
            return {}
        rows = s.scalars(select(ReclaimRow).where(
            ReclaimRow.username == username, ReclaimRow.pool_id.in_(pool_ids),
            ReclaimRow.seen_at.is_(None), ReclaimRow.at >= self._clock() - NOTICE_FOR)
            .order_by(ReclaimRow.at))
        return {r.pool_id: Notice(r.id, r.at, r.action, r.cause, r.since) for r in rows}

    @staticmethod
    def mark_seen(s: Session, username: str, pool_id: str, now: datetime) -> None:
        """In the caller's transaction (a connect): the clerk is back, the news is old."""
        s.execute(update(ReclaimRow).where(
            ReclaimRow.username == username, ReclaimRow.pool_id == pool_id,
            ReclaimRow.seen_at.is_(None)).values(seen_at=now))

    def still_here(self, username: str, pool_id: str) -> bool:
        """The clerk answered the warning: that is input. False: no desktop of theirs
        in the pool (it was taken back already)."""
        now = self._clock()
        with self._sessions.begin() as s:
            return desktops.still_here(s, pool_id, username, now)
