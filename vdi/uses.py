"""Desktop uses: the record metering adds up. A use is a clerk's console open on a
desktop; it begins when a console opens and ends when the last one closes or the desktop
is taken from the clerk (kick, log-off, reclaim, removal, power-down). The desktop state
machine (vdi.desktops) calls these in the same transaction as the change they follow,
so a use never outlives the console it records. At most one use per desktop is open.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import case, insert, literal, select, update
from sqlalchemy.orm import Session

from vdi.models import DesktopRow, DesktopUseRow, PoolRow


def begin(s: Session, desktop_id: str, username: str, now: datetime) -> None:
    """A console of `username` opened on the desktop now: a use begins, with the pool
    and office the desktop belongs to now. A use still open on it (a second tab, a
    reconnect before the close was seen) ends now: uses never overlap on one desktop."""
    end(s, desktop_id, now)
    s.execute(insert(DesktopUseRow).from_select(
        ["desktop_id", "pool_id", "office", "username", "started_at", "seen_at"],
        select(DesktopRow.id, DesktopRow.pool_id, PoolRow.office, literal(username),
               literal(now, DesktopUseRow.started_at.type),
               literal(now, DesktopUseRow.seen_at.type))
        .join(PoolRow, PoolRow.id == DesktopRow.pool_id)
        .where(DesktopRow.id == desktop_id)))


# A use whose console has not been seen for this long was left open by a broker that
# died (the heartbeat is every few seconds): it ended when it was last seen, not now.
STALE = timedelta(minutes=5)


def end(s: Session, desktop_id: str, now: datetime) -> None:
    """The desktop's open use, if any, ends now; or, when its console was last seen
    more than STALE ago (its broker died), at that last sight."""
    s.execute(update(DesktopUseRow)
              .where(DesktopUseRow.desktop_id == desktop_id, DesktopUseRow.ended_at.is_(None))
              .values(ended_at=case(
                  (DesktopUseRow.seen_at >= now - STALE,
                   literal(now, DesktopUseRow.ended_at.type)),  # stored as UTC like the rest
                  else_=DesktopUseRow.seen_at))
              .execution_options(synchronize_session=False))


def seen(s: Session, desktop_ids: Collection[str], now: datetime) -> None:
    """The consoles on these desktops are still open as of `now` (the heartbeat)."""
    if desktop_ids:
        s.execute(update(DesktopUseRow)
                  .where(DesktopUseRow.desktop_id.in_(list(desktop_ids)),
                         DesktopUseRow.ended_at.is_(None), DesktopUseRow.seen_at < now)
                  .values(seen_at=now)
                  .execution_options(synchronize_session=False))
