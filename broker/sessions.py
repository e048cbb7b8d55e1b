"""Server-side web sessions. The cookie holds a random id; the database only its hash."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from vdi.domain import Principal, Role, utc_now
from vdi.models import AuditRow, SessionRow

TOUCH_EVERY = timedelta(seconds=60)
HANDLE_CHARS = 16  # a session's handle for administrators: never the cookie or its hash
# a session stored with a role since renamed or dropped keeps the others (the next
# directory re-check stores the roles as they are now)
_ROLE_NAMES = frozenset(r.value for r in Role)


def hash_secret(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class WebSession:
    id_hash: str
    principal: Principal
    csrf: str
    created_at: datetime
    checked_at: datetime  # when the directory last confirmed the user (see SignIn)


class SessionStore:
    def __init__(self, sessions: sessionmaker[Session], *, idle_s: int, absolute_s: int,
                 clock: Callable[[], datetime] = utc_now,
                 limits: Callable[[], tuple[int, int]] | None = None) -> None:
        """`limits`: (idle, absolute) seconds as they are now (the security
        administrator's policy); without it, `idle_s` and `absolute_s` for ever."""
        self._sessions = sessions
        self._limits = limits or (lambda: (idle_s, absolute_s))
        self._clock = clock

    @property
    def _idle(self) -> timedelta:
        return timedelta(seconds=self._limits()[0])

    @property
    def _absolute(self) -> timedelta:
        return timedelta(seconds=self._limits()[1])

    def create(self, principal: Principal, source: str, *, audit: AuditRow | None = None
               ) -> tuple[str, WebSession]:
        """A new session (always a fresh id: no fixation). Returns (cookie value, session).
        `audit` (vdi.audit.AuditLog.row) is written in the same transaction."""
        raw = secrets.token_urlsafe(32)
        now = self._clock()
        row = SessionRow(id_hash=hash_secret(raw), username=principal.username,
                         display_name=principal.display_name,
                         roles=sorted(r.value for r in principal.roles),
                         groups=sorted(principal.groups), csrf=secrets.token_urlsafe(24),
                         source=source[:64], created_at=now, last_seen_at=now,
                         checked_at=now)
        with self._sessions.begin() as s:
            s.add(row)
            if audit is not None:
                s.add(audit)
        return raw, _to_session(row)

    def get(self, raw: str | None) -> WebSession | None:
        """The live session for a cookie value, or None (unknown, ended, idle or too old).
        Refreshes last_seen at most once a minute: every request reads the session, so
        the read takes no write lock and only the rare refresh or expiry writes."""
        if not raw or len(raw) > 128:
            return None
        now = self._clock()
        id_hash = hash_secret(raw)
        with self._sessions() as s:
            row = s.get(SessionRow, id_hash)
            if row is None or row.ended_at is not None:
                return None
            expired = (now - row.last_seen_at > self._idle
                       or now - row.created_at > self._absolute)
            stale = now - row.last_seen_at > TOUCH_EVERY
            session = None if expired else _to_session(row)
            seen = row.last_seen_at
        if expired:
            self._end(id_hash, now)
        elif stale:
            self._touch(id_hash, seen, now)
        return session

    def _touch(self, id_hash: str, seen: datetime, now: datetime) -> None:
        """last_seen = now, unless another request already moved it (or ended it)."""
        with self._sessions.begin() as s:
            s.execute(update(SessionRow).where(SessionRow.id_hash == id_hash,
                                               SessionRow.ended_at.is_(None),
                                               SessionRow.last_seen_at == seen)
                      .values(last_seen_at=now))

    def is_live(self, id_hash: str) -> bool:
        now = self._clock()
        with self._sessions() as s:
            row = s.get(SessionRow, id_hash)
            return bool(row and row.ended_at is None
                        and now - row.last_seen_at <= self._idle
                        and now - row.created_at <= self._absolute)

    def confirm(self, session: WebSession, principal: Principal) -> WebSession | None:
        """The directory confirmed the user: store their roles and groups as of now.
        None when the session ended meanwhile."""
        now = self._clock()
        with self._sessions.begin() as s:
            row = s.get(SessionRow, session.id_hash)
            if row is None or row.ended_at is not None:
                return None
            row.display_name = principal.display_name
            row.roles = sorted(r.value for r in principal.roles)
            row.groups = sorted(principal.groups)
            row.checked_at = now
            return _to_session(row)

    def unchecked_among(self, id_hashes: Iterable[str], since: datetime) -> list[WebSession]:
        """Those live sessions among the given that the directory has not confirmed
        since `since`."""
        wanted = list(set(id_hashes))
        if not wanted:
            return []
        with self._sessions() as s:
            return [_to_session(r) for r in s.scalars(select(SessionRow).where(
                SessionRow.id_hash.in_(wanted), SessionRow.ended_at.is_(None),
                SessionRow.checked_at < since))]

    def live_among(self, id_hashes: Iterable[str]) -> dict[str, frozenset[str]]:
        """Those of the given sessions that are still live, each with its user's groups
        as last confirmed (one query): a broker's heartbeat closes the consoles of
        sessions ended through another broker, and of pools no longer the user's."""
        wanted = list(set(id_hashes))
        if not wanted:
            return {}
        now = self._clock()
        with self._sessions() as s:
            return {h: frozenset(groups) for h, groups in s.execute(
                select(SessionRow.id_hash, SessionRow.groups).where(
                    SessionRow.id_hash.in_(wanted), SessionRow.ended_at.is_(None),
                    SessionRow.last_seen_at >= now - self._idle,
                    SessionRow.created_at >= now - self._absolute))}

    def end(self, id_hash: str) -> None:
        """End the session; idempotent."""
        self._end(id_hash, self._clock())

    def _end(self, id_hash: str, now: datetime) -> None:
        with self._sessions.begin() as s:
            s.execute(update(SessionRow).where(SessionRow.id_hash == id_hash,
                                               SessionRow.ended_at.is_(None))
                      .values(ended_at=now))

    def live(self, limit: int = 1000) -> list[LiveSession]:
        """The live sessions, newest first (for the security administrator)."""
        now = self._clock()
        with self._sessions() as s:
            return [LiveSession(r.id_hash[:HANDLE_CHARS], r.username, r.display_name,
                                tuple(r.roles), r.source, r.created_at, r.last_seen_at)
                    for r in s.scalars(select(SessionRow).where(
                        SessionRow.ended_at.is_(None),
                        SessionRow.last_seen_at >= now - self._idle,
                        SessionRow.created_at >= now - self._absolute)
                        .order_by(SessionRow.created_at.desc()).limit(limit))]

    def by_handle(self, handle: str) -> WebSession | None:
        """The live session whose handle (the start of its hash) this is, if exactly one."""
        if len(handle) != HANDLE_CHARS or not all(c in "0123456789abcdef" for c in handle):
            return None
        with self._sessions() as s:
            rows = s.scalars(select(SessionRow).where(
                SessionRow.id_hash.startswith(handle), SessionRow.ended_at.is_(None))
                .limit(2)).all()
        if len(rows) != 1 or not self.is_live(rows[0].id_hash):
            return None
        return _to_session(rows[0])

    def live_for_user(self, username: str) -> list[str]:
        with self._sessions() as s:
            return list(s.scalars(select(SessionRow.id_hash).where(
                SessionRow.username == username, SessionRow.ended_at.is_(None))))


@dataclass(frozen=True)
class LiveSession:
    handle: str
    username: str
    display_name: str
    roles: tuple[str, ...]
    source: str
    created_at: datetime
    last_seen_at: datetime


def _to_session(row: SessionRow) -> WebSession:
    principal = Principal(username=row.username, display_name=row.display_name,
                          roles=frozenset(Role(r) for r in row.roles if r in _ROLE_NAMES),
                          groups=frozenset(row.groups))
    return WebSession(id_hash=row.id_hash, principal=principal, csrf=row.csrf,
                      created_at=row.created_at, checked_at=row.checked_at)
