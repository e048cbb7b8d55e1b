"""The security administrator's work (安全管理员): who is signed in, from where, using
which desktop; and ending a session, with a reason, on every broker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from broker.access import roles_text
from broker.activity import TunnelRegistry
from broker.blocking import Blocking
from broker.errors import BadRequest, BrokerError
from broker.sessions import LiveSession, SessionStore
from broker.tokens import TokenStore
from vdi.audit import AuditLog
from vdi.catalog import Catalog
from vdi.domain import DesktopState, Principal, utc_now

REASON_CHARS = (4, 500)


class SessionNotFound(BrokerError):
    """No live session with that handle."""


@dataclass(frozen=True)
class SessionView:
    session: LiveSession
    desktops: tuple[str, ...]  # the desktops in use by its user


class SecurityAdmin:
    def __init__(self, *, blocking: Blocking, db: sessionmaker[Session],
                 sessions: SessionStore, tokens: TokenStore, tunnels: TunnelRegistry,
                 audit: AuditLog, clock: Callable[[], datetime] = utc_now) -> None:
        self._blocking = blocking
        self._sessions = sessions
        self._tokens = tokens
        self._tunnels = tunnels
        self._audit = audit
        self._catalog = Catalog(db)
        self._clock = clock

    async def sessions(self, who: Principal, source: str) -> list[SessionView]:
        def read() -> list[SessionView]:
            in_use: dict[str, list[str]] = {}
            for d in self._catalog.desktops(states=[DesktopState.ASSIGNED]):
                if d.assigned_user:
                    in_use.setdefault(d.assigned_user, []).append(d.id)
            return [SessionView(s, tuple(in_use.get(s.username, ())))
                    for s in self._sessions.live()]
        views = await self._blocking.db(read)
        await self._blocking.db(lambda: self._audit.record(
            actor=who.username, role=roles_text(who), action="sessions-read", target="-",
            source=source, outcome="ok", detail=f"{len(views)} live session(s)"))
        return views

    async def end(self, who: Principal, handle: str, reason: str, source: str) -> str:
        """End a live session for `reason`: its console grants are revoked, its consoles
        here closed now and on the other brokers at their next heartbeat. The user's
        name. Raises SessionNotFound, BadRequest."""
        reason = " ".join(reason.split())
        if not REASON_CHARS[0] <= len(reason) <= REASON_CHARS[1] or not reason.isprintable():
            raise BadRequest(f"Give a reason of {REASON_CHARS[0]} to {REASON_CHARS[1]} "
                             "characters.")
        session = await self._blocking.db(self._sessions.by_handle, handle)
        if session is None:
            raise SessionNotFound(handle)

        def end() -> None:
            self._sessions.end(session.id_hash)
            self._tokens.revoke_session(session.id_hash)
        await self._blocking.db(end)
        closed = self._tunnels.close_session(session.id_hash)
        user = session.principal.username
        await self._blocking.db(lambda: self._audit.record(
            actor=who.username, role=roles_text(who), action="session-end", target=user,
            source=source, outcome="ok",
            detail=f"ended by the security administrator; reason: {reason}; consoles "
                   f"closed here: {closed}"))
        return user
