"""What the idle policy did and why, for admins and the helpdesk (web and CLI)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.access import roles_text
from broker.blocking import Blocking
from broker.errors import BadRequest
from vdi.audit import AuditLog
from vdi.domain import Principal, utc_now
from vdi.models import ReclaimRow

MAX_RECLAIMS = 500
MAX_HOURS = 90 * 24


@dataclass(frozen=True)
class Reclaim:
    at: datetime
    desktop_id: str
    pool_id: str
    username: str | None
    action: str
    cause: str
    since: datetime
    shift: str
    reason: str
    seen_at: datetime | None


def read_reclaims(db: sessionmaker[Session], now: datetime, *, hours: float,
                  pool: str | None = None, user: str | None = None,
                  limit: int | None = MAX_RECLAIMS) -> list[Reclaim]:
    """Reclaims of the last `hours`, newest first (at most `limit`; None: all). Blocks
    on the database."""
    q = select(ReclaimRow).where(ReclaimRow.at >= now - timedelta(hours=hours))
    if pool:
        q = q.where(ReclaimRow.pool_id == pool)
    if user:
        q = q.where(ReclaimRow.username == user)
    with db() as s:
        return [Reclaim(r.at, r.desktop_id, r.pool_id, r.username, r.action, r.cause, r.since,
                        r.shift, r.reason, r.seen_at)
                for r in s.scalars(q.order_by(ReclaimRow.at.desc()).limit(limit))]


def parse_hours(text: str | None) -> float:
    """`hours` from a request: a number in (0, 90 days]. Raises BadRequest."""
    try:
        hours = float(text if text is not None else "24")
    except ValueError:
        raise BadRequest("hours must be a number.") from None
    if not math.isfinite(hours) or not 0 < hours <= MAX_HOURS:
        raise BadRequest("hours must be a number.")
    return hours


class ReclaimLog:
    def __init__(self, *, blocking: Blocking, db: sessionmaker[Session], audit: AuditLog,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._blocking = blocking
        self._db = db
        self._audit = audit
        self._clock = clock

    async def read(self, who: Principal, *, hours: float, pool: str | None,
                   user: str | None, source: str) -> list[Reclaim]:
        """The reclaims for the caller (who must hold READ_RECLAIMS); who looked at
        whose history is itself on record."""
        found = await self._blocking.db(lambda: read_reclaims(
            self._db, self._clock(), hours=hours, pool=pool, user=user))
        await self._blocking.db(lambda: self._audit.record(
            actor=who.username, role=roles_text(who), action="reclaims-read",
            target=f"pool={pool or '*'} user={user or '*'}", source=source,
            outcome="ok", detail=f"{len(found)} record(s), {hours:g} h"))
        return found
