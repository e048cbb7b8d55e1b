"""The helpdesk's disconnects of a clerk's consoles: the desktop keeps running, the
clerk's console connections to it close on every broker (this one at once, the others
at their next signal round), and the clerk's page says the helpdesk did it until the
clerk connects again."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from vdi.domain import utc_now
from vdi.models import ConsoleDisconnectRow

NEWS_FOR = timedelta(hours=24)  # older disconnects are not news to the clerk


@dataclass(frozen=True)
class Disconnect:
    id: int
    desktop_id: str
    by_name: str
    at: datetime


class DisconnectStore:
    def __init__(self, sessions: sessionmaker[Session],
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._sessions = sessions
        self._clock = clock

    def record(self, *, desktop_id: str, pool_id: str, username: str, by_user: str,
               by_name: str, reason: str) -> Disconnect:
        """Blocks on the database."""
        now = self._clock()
        with self._sessions.begin() as s:
            row = ConsoleDisconnectRow(desktop_id=desktop_id, pool_id=pool_id,
                                       username=username, by_user=by_user,
                                       by_name=by_name[:200], reason=reason, at=now)
            s.add(row)
            s.flush()
            return Disconnect(int(row.id), desktop_id, row.by_name, now)

    def pending(self, username: str, pool_id: str) -> Disconnect | None:
        """The latest disconnect of the clerk's consoles in the pool they have not
        connected again since."""
        with self._sessions() as s:
            row = s.scalars(select(ConsoleDisconnectRow).where(
                ConsoleDisconnectRow.username == username,
                ConsoleDisconnectRow.pool_id == pool_id,
                ConsoleDisconnectRow.seen_at.is_(None),
                ConsoleDisconnectRow.at >= self._clock() - NEWS_FOR)
                .order_by(ConsoleDisconnectRow.id.desc()).limit(1)).first()
            return Disconnect(row.id, row.desktop_id, row.by_name, row.at) if row else None

    @staticmethod
    def mark_seen(s: Session, username: str, pool_id: str, now: datetime) -> None:
        """In the caller's transaction (a connect): the clerk is back, the news is old."""
        s.execute(update(ConsoleDisconnectRow).where(
            ConsoleDisconnectRow.username == username, ConsoleDisconnectRow.pool_id == pool_id,
            ConsoleDisconnectRow.seen_at.is_(None)).values(seen_at=now))

    @staticmethod
    def latest(s: Session, desktop_ids: Iterable[str]) -> dict[str, datetime]:
        """The time of the latest disconnect of each of these desktops that has one
        (in the caller's session): consoles opened before it are to close."""
        wanted = list(desktop_ids)
        if not wanted:
            return {}
        return {desktop_id: at for desktop_id, at in s.execute(
            select(ConsoleDisconnectRow.desktop_id, func.max(ConsoleDisconnectRow.at))
            .where(ConsoleDisconnectRow.desktop_id.in_(wanted))
            .group_by(ConsoleDisconnectRow.desktop_id))}
