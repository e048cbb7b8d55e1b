"""Clerks waiting for a desktop of a pool: a first-come, first-served queue, and the
demand the pool worker grows the pool for.

A clerk told "being prepared" joins the queue of that pool (once: a clerk keeps their
place while they keep asking, which the desktop page does every few seconds). A desktop
that comes up goes to the clerk longest in the queue: a clerk may take a ready spare
only while fewer clerks are ahead of them than there are spares. A clerk who stops
asking (closed the page) is no longer counted after WAIT_FRESH, and their row goes after
WAIT_FORGET. All in the caller's transaction."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vdi.db import rows_changed
from vdi.models import WaiterRow

WAIT_FRESH = timedelta(seconds=20)  # the desktop page asks every 1.5 s
WAIT_FORGET = timedelta(minutes=10)
SEEN_WRITE_EVERY = timedelta(seconds=5)


def join(s: Session, pool_id: str, username: str, now: datetime) -> datetime:
    """The clerk is (still) waiting: when they joined. A clerk whose place lapsed (not
    asked for WAIT_FRESH) joins again at the back."""
    row = s.get(WaiterRow, (pool_id, username))
    if row is not None and row.seen_at >= now - WAIT_FRESH:
        if row.seen_at < now - SEEN_WRITE_EVERY:  # not a write for every poll
            row.seen_at = now
        return row.since
    if row is not None:
        row.since, row.seen_at = now, now
        return now
    try:
        with s.begin_nested():
            s.add(WaiterRow(pool_id=pool_id, username=username, since=now, seen_at=now))
    except IntegrityError:  # this clerk's other request joined first
        s.execute(update(WaiterRow).where(WaiterRow.pool_id == pool_id,
                                          WaiterRow.username == username)
                  .values(seen_at=now))
        since = s.scalar(select(WaiterRow.since).where(WaiterRow.pool_id == pool_id,
                                                       WaiterRow.username == username))
        return since or now
    return now


def ahead(s: Session, pool_id: str, username: str, since: datetime, now: datetime) -> int:
    """How many clerks still waiting joined before this one (ties: by name)."""
    return s.scalar(select(func.count()).select_from(WaiterRow).where(
        WaiterRow.pool_id == pool_id, WaiterRow.seen_at >= now - WAIT_FRESH,
        or_(WaiterRow.since < since,
            (WaiterRow.since == since) & (WaiterRow.username < username)))) or 0


def leave(s: Session, pool_id: str, username: str) -> None:
    s.execute(delete(WaiterRow).where(WaiterRow.pool_id == pool_id,
                                      WaiterRow.username == username))


def waiting(s: Session, pool_id: str, now: datetime) -> int:
    """Clerks waiting for the pool now: its demand beyond its spare level."""
    return s.scalar(select(func.count()).select_from(WaiterRow).where(
        WaiterRow.pool_id == pool_id, WaiterRow.seen_at >= now - WAIT_FRESH)) or 0


def forget_lapsed(s: Session, now: datetime) -> int:
    """Rows of clerks who stopped asking long ago. Returns how many went."""
    return rows_changed(s.execute(delete(WaiterRow).where(
        WaiterRow.seen_at < now - WAIT_FORGET)))


