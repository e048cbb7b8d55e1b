"""One-time console tokens: random, stored as a hash, short-lived, bound to the user,
the web session, the desktop and the console kind (Nova's lesson, OSSN-0008)."""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, update
from sqlalchemy.orm import Session, sessionmaker

from broker.sessions import hash_secret
from vdi.domain import utc_now
from vdi.models import AuditRow, ConsoleTokenRow

TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # token_urlsafe(32)
# Expired rows are deleted by issue() at most this often (seconds): a sweep per token
# would scan the table once per login. consume() checks expiry itself.
SWEEP_EVERY = timedelta(seconds=10)


class TokenRejected(Exception):
    """The token cannot open a console; `reason` is for the audit log, not the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ConsoleGrant:
    username: str
    session_hash: str
    desktop_id: str
    kind: str
    channel: int  # 1 for the first websocket of the grant, 2 for the second, ...


class TokenStore:
    def __init__(self, sessions: sessionmaker[Session], *, ttl_s: int,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._sessions = sessions
        self._ttl = timedelta(seconds=ttl_s)
        self._clock = clock
        self._next_sweep: datetime | None = None  # when issue() next deletes expired rows
        self._sweep_lock = threading.Lock()

    @property
    def ttl_s(self) -> int:
        return int(self._ttl.total_seconds())

    def issue(self, *, username: str, session_hash: str, desktop_id: str,
              kind: str = "vnc", channels: int = 1, audit: AuditRow | None = None) -> str:
        """A new token (256 random bits) that may open `channels` websockets within its
        lifetime (VNC: one; SPICE opens one per channel). Only its hash is stored.
        `audit` (vdi.audit.AuditLog.row) is written in the same transaction."""
        if channels < 1:
            raise ValueError("a console grant opens at least one channel")
        raw = secrets.token_urlsafe(32)
        now = self._clock()
        with self._sessions.begin() as s:
            if self._sweep_due(now):
                s.execute(delete(ConsoleTokenRow).where(ConsoleTokenRow.expires_at < now))
            s.add(ConsoleTokenRow(token_hash=hash_secret(raw), username=username,
                                  session_hash=session_hash, desktop_id=desktop_id, kind=kind,
                                  expires_at=now + self._ttl, channels=channels, uses=0))
            if audit is not None:
                s.add(audit)
        return raw

    def _sweep_due(self, now: datetime) -> bool:
        with self._sweep_lock:
            if self._next_sweep is not None and now < self._next_sweep:
                return False
            self._next_sweep = now + SWEEP_EVERY
            return True

    def consume(self, raw: str, *, session_hash: str | None,
                kind: str | None = "vnc") -> ConsoleGrant:
        """Open one of the token's channels. Raises TokenRejected when it is malformed,
        unknown, used up, expired, of another kind than `kind` (None: any; the caller
        checks the grant's kind), or presented with another session's cookie."""
        if not TOKEN_RE.fullmatch(raw):  # match() would let a trailing newline through
            raise TokenRejected("malformed token")
        now = self._clock()
        h = hash_secret(raw)
        with self._sessions.begin() as s:
            row = s.get(ConsoleTokenRow, h)
            if row is None:
                raise TokenRejected("unknown token")
            if row.uses >= row.channels:
                raise TokenRejected("token already used")
            if row.expires_at <= now:
                raise TokenRejected("token expired")
            if kind is not None and row.kind != kind:
                raise TokenRejected("token for another console kind")
            if session_hash is None or row.session_hash != session_hash:
                raise TokenRejected("token bound to another session")
            # one statement takes a channel while one is left: websockets opening a
            # grant's channels at once each get their own, never one too many
            channel = s.execute(update(ConsoleTokenRow)
                                .where(ConsoleTokenRow.token_hash == h,
                                       ConsoleTokenRow.uses < ConsoleTokenRow.channels)
                                .values(uses=ConsoleTokenRow.uses + 1,
                                        used_at=func.coalesce(ConsoleTokenRow.used_at, now))
                                .returning(ConsoleTokenRow.uses)
                                .execution_options(synchronize_session=False)).scalar()
            if channel is None:
                raise TokenRejected("token already used")
            return ConsoleGrant(username=row.username, session_hash=row.session_hash,
                                desktop_id=row.desktop_id, kind=row.kind, channel=channel)

    def revoke_session(self, session_hash: str) -> None:
        """Tokens of an ended session die with it (also their channels not yet opened)."""
        with self._sessions.begin() as s:
            s.execute(delete(ConsoleTokenRow).where(
                ConsoleTokenRow.session_hash == session_hash,
                ConsoleTokenRow.uses < ConsoleTokenRow.channels))
