"""Messages from the helpdesk to a clerk at their desktop ("I am restarting your
desktop, save your work"): kept until the clerk acknowledges them on the desktop's page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from vdi.db import rows_changed
from vdi.domain import utc_now
from vdi.models import HelpdeskMessageRow

MESSAGE_CHARS = (1, 500)


@dataclass(frozen=True)
class Message:
    id: int
    sender: str
    sender_name: str
    text: str
    at: datetime


class MessageStore:
    def __init__(self, sessions: sessionmaker[Session],
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._sessions = sessions
        self._clock = clock

    def send(self, *, desktop_id: str, pool_id: str, username: str, sender: str,
             sender_name: str, text: str) -> int:
        with self._sessions.begin() as s:
            row = HelpdeskMessageRow(desktop_id=desktop_id, pool_id=pool_id,
                                     username=username, sender=sender,
                                     sender_name=sender_name[:200], text=text,
                                     at=self._clock())
            s.add(row)
            s.flush()
            return int(row.id)

    def pending(self, username: str, pool_id: str) -> Message | None:
        """The oldest message to `username` in `pool_id` not acknowledged yet."""
        with self._sessions() as s:
            row = s.scalars(select(HelpdeskMessageRow).where(
                HelpdeskMessageRow.username == username, HelpdeskMessageRow.pool_id == pool_id,
                HelpdeskMessageRow.seen_at.is_(None)).order_by(HelpdeskMessageRow.id)
                .limit(1)).first()
            return Message(row.id, row.sender, row.sender_name, row.text, row.at) \
                if row else None

    def seen(self, message_id: int, username: str) -> bool:
        """The clerk acknowledged it; False when it is not theirs or was already seen."""
        with self._sessions.begin() as s:
            return rows_changed(s.execute(update(HelpdeskMessageRow).where(
                HelpdeskMessageRow.id == message_id, HelpdeskMessageRow.username == username,
                HelpdeskMessageRow.seen_at.is_(None)).values(seen_at=self._clock()))) == 1
