"""The helpdesk's read-only view of a clerk's running desktop.

A helpdesk member who serves the clerk asks for a view with a reason and gets a
one-time websocket path (its token stored as a hash, bound to their session, valid for
VIEW_GRANT_S). The broker opens its own shared connection to the desktop's VNC server
(the clerk keeps theirs) and relays it with the RFB core's read-only filter: only
display requests reach the desktop, every input message is dropped there, an unknown
or malformed one ends the view. While the view is open its row is kept alive, and the
clerk's desktop page says who is viewing; the view ends when the desktop is no longer
the clerk's or the helpdesk member's session ends. Start and end are recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from broker.access import roles_text
from broker.activity import TunnelRegistry
from broker.assignment import ConsoleUnsupported
from broker.blocking import Blocking
from broker.consoles import (
    INTERNAL_ERROR,
    NORMAL,
    POLICY_VIOLATION,
    TRY_AGAIN_LATER,
    Closing,
    ConsoleRefused,
    console_target,
)
from broker.errors import BrokerError
from broker.helpdesk import Helpdesk, clean_reason
from broker.sessions import SessionStore, WebSession, hash_secret
from broker.tokens import TOKEN_RE
from broker.tunnel import BrowserRefused, BrowserSocket, ConsoleTarget, TunnelError, run_tunnel
from pools.calls import HostCalls
from vdi.audit import AuditLog
from vdi.catalog import Catalog
from vdi.domain import ConsoleKind, Desktop, DesktopState, Principal, utc_now
from vdi.models import HelpdeskViewRow

log = logging.getLogger(__name__)
VIEW_GRANT_S = 60  # the websocket must open within this
ALIVE_EVERY_S = 10.0  # the broker carrying a view says so this often
ALIVE_FOR = timedelta(seconds=45)  # a view not said alive this long is over (broker gone)


@dataclass(frozen=True)
class ViewOffer:
    desktop_id: str
    token: str  # one-time, for the websocket path only
    expires_in: int


@dataclass(frozen=True)
class OpenedView:
    id: int
    desktop_id: str
    clerk: str
    reason: str


@dataclass(frozen=True)
class ViewAdmission:
    view_id: int
    viewer: Principal
    session_hash: str
    desktop: Desktop
    reason: str
    source: str
    opened_at: datetime


class ViewStore:
    """The views' rows. Every method blocks on the database."""

    def __init__(self, sessions: sessionmaker[Session],
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._sessions = sessions
        self._clock = clock

    def grant(self, *, session: WebSession, desktop: Desktop, reason: str) -> str:
        raw = secrets.token_urlsafe(32)
        now = self._clock()
        who = session.principal
        with self._sessions.begin() as s:
            s.add(HelpdeskViewRow(token_hash=hash_secret(raw), session_hash=session.id_hash,
                                  viewer=who.username, viewer_name=who.display_name[:200],
                                  desktop_id=desktop.id, pool_id=desktop.pool_id,
                                  clerk=desktop.assigned_user or "-", reason=reason,
                                  granted_at=now, expires_at=now + timedelta(
                                      seconds=VIEW_GRANT_S)))
        return raw

    def open(self, raw: str, session_hash: str) -> OpenedView | None:
        """Mark the view of this token open (once, before it expires, with the session
        it was granted to); None otherwise."""
        if not TOKEN_RE.fullmatch(raw):
            return None
        now = self._clock()
        h = hash_secret(raw)
        with self._sessions.begin() as s:
            opened = s.execute(update(HelpdeskViewRow).where(
                HelpdeskViewRow.token_hash == h, HelpdeskViewRow.opened_at.is_(None),
                HelpdeskViewRow.expires_at > now,
                HelpdeskViewRow.session_hash == session_hash)
                .values(opened_at=now, alive_at=now)
                .returning(HelpdeskViewRow.id)
                .execution_options(synchronize_session=False)).scalar()
            if opened is None:
                return None
            row = s.get(HelpdeskViewRow, opened)
            return OpenedView(row.id, row.desktop_id, row.clerk, row.reason) \
                if row is not None else None

    def alive(self, view_id: int) -> None:
        with self._sessions.begin() as s:
            s.execute(update(HelpdeskViewRow).where(HelpdeskViewRow.id == view_id)
                      .values(alive_at=self._clock()))

    def close(self, view_id: int) -> None:
        with self._sessions.begin() as s:
            s.execute(update(HelpdeskViewRow).where(HelpdeskViewRow.id == view_id,
                                                    HelpdeskViewRow.closed_at.is_(None))
                      .values(closed_at=self._clock()))

    def viewers(self, clerk: str, pool_id: str) -> list[str]:
        """The names of those viewing the clerk's desktop in the pool now."""
        with self._sessions() as s:
            return sorted(set(s.scalars(select(HelpdeskViewRow.viewer_name).where(
                HelpdeskViewRow.clerk == clerk, HelpdeskViewRow.pool_id == pool_id,
                HelpdeskViewRow.closed_at.is_(None), HelpdeskViewRow.opened_at.is_not(None),
                HelpdeskViewRow.alive_at >= self._clock() - ALIVE_FOR))))


class ReadOnlyViews:
    def __init__(self, *, blocking: Blocking, db: sessionmaker[Session],
                 sessions: SessionStore, helpdesk: Helpdesk, audit: AuditLog,
                 calls: HostCalls, tunnels: TunnelRegistry, vnc_password_valid_s: int,
                 max_cut_text: int, clock: Callable[[], datetime] = utc_now,
                 admits: Callable[[str], bool] = lambda source: True) -> None:
        """`admits`: whether a viewer's address is inside the access policy's admin
        networks now (an open view ends within a round when it no longer is)."""
        self._blocking = blocking
        self._sessions = sessions
        self._admits = admits
        self._helpdesk = helpdesk
        self._audit = audit
        self._calls = calls
        self._tunnels = tunnels
        self._password_valid_s = vnc_password_valid_s
        self._max_cut_text = max_cut_text
        self._catalog = Catalog(db)
        self._store = ViewStore(db, clock)
        self._clock = clock

    async def grant(self, session: WebSession, desktop_id: str, reason: str) -> ViewOffer:
        """A one-time token for a read-only view of a served clerk's desktop in use.
        Raises BadRequest (the reason), DesktopNotFound, ConsoleUnsupported."""
        reason = clean_reason(reason)
        desktop = await self._helpdesk.served_desktop(session.principal, desktop_id)
        if desktop.console is None or desktop.console.kind is not ConsoleKind.VNC:
            raise ConsoleUnsupported(desktop.console.kind.value if desktop.console else "-")
        token = await self._blocking.db(lambda: self._store.grant(
            session=session, desktop=desktop, reason=reason))
        return ViewOffer(desktop.id, token, VIEW_GRANT_S)

    async def admit(self, token: str, cookie: str | None, source: str) -> ViewAdmission:
        """Open the view of a token presented with the session it was granted to, on a
        desktop the viewer still serves, still the clerk's. Records the start. Raises
        ConsoleRefused (recorded)."""
        session = await self._blocking.db(self._sessions.get, cookie) if cookie else None
        row = await self._blocking.db(self._store.open, token, session.id_hash) \
            if session is not None else None
        if session is None or row is None:
            await self._refused(session.principal if session else None, "-", source,
                                "unknown, used, expired or another session's token")
            raise ConsoleRefused("bad view token")
        try:
            desktop = await self._helpdesk.served_desktop(session.principal, row.desktop_id)
        except BrokerError:
            desktop = None
        if desktop is None or desktop.assigned_user != row.clerk or desktop.console is None:
            await self._blocking.db(self._store.close, row.id)
            await self._refused(session.principal, row.desktop_id, source,
                                "the desktop is no longer the clerk's")
            raise ConsoleRefused("desktop no longer assigned")
        who = session.principal
        await self._blocking.db(lambda: self._audit.record(
            actor=who.username, role=roles_text(who), action="helpdesk-watch-start",
            target=desktop.id, source=source, outcome="ok",
            detail=f"clerk {row.clerk}: read-only view; reason: {row.reason}"))
        return ViewAdmission(row.id, who, session.id_hash, desktop, row.reason, source,
                             self._clock())

    async def relay(self, admission: ViewAdmission, browser: BrowserSocket) -> Closing:
        """Relay the view read-only until the viewer leaves, the desktop goes, or it is
        no longer the clerk's or the viewer's session ends; records the end."""
        desktop = admission.desktop

        async def prepare() -> ConsoleTarget:
            return await console_target(self._calls, desktop, self._password_valid_s)

        tunnel = asyncio.create_task(run_tunnel(
            browser, prepare, on_input=lambda: None, max_cut_text=self._max_cut_text,
            setup_lock=self._tunnels.setup_lock(desktop.id), read_only=True))
        watch = asyncio.create_task(self._watch(admission))
        closing, reason = Closing(NORMAL, "bye"), "closed"
        try:
            done, _ = await asyncio.wait({tunnel, watch}, return_when=asyncio.FIRST_COMPLETED)
            if watch in done and not watch.exception():
                reason = f"closed by the broker: {watch.result()}"
                closing = Closing(NORMAL, "view ended")
            else:
                reason = tunnel.result() if tunnel in done else "closed"
        except BrowserRefused as e:
            reason, closing = str(e), Closing(POLICY_VIOLATION, "handshake refused")
        except TunnelError as e:
            log.warning("view of %s: %s", desktop.id, e)
            reason, closing = str(e), Closing(TRY_AGAIN_LATER, "desktop console unavailable")
        except Exception as e:  # one bad view must not hurt others
            log.exception("view of %s failed", desktop.id)
            reason, closing = f"view failed: {e.__class__.__name__}", Closing(
                INTERNAL_ERROR, "tunnel error")
        finally:
            for task in (tunnel, watch):
                task.cancel()
            for task in (tunnel, watch):
                with contextlib.suppress(BaseException):
                    await task
            await self._ended(admission, reason)
        return closing

    async def _watch(self, admission: ViewAdmission) -> str:
        """Keep the view's row alive; return why it must end."""
        desktop, clerk = admission.desktop, admission.desktop.assigned_user
        while True:
            await asyncio.sleep(ALIVE_EVERY_S)

            def check() -> str | None:
                now_desktop = self._catalog.desktop(desktop.id)
                if now_desktop is None or now_desktop.assigned_user != clerk or \
                        now_desktop.state is not DesktopState.ASSIGNED:
                    return "the desktop is no longer the clerk's"
                if not self._sessions.live_among([admission.session_hash]):
                    return "the viewer's session ended"
                if not self._admits(admission.source):
                    return "the viewer's address is outside the admin networks now"
                self._store.alive(admission.view_id)
                return None

            try:
                why = await self._blocking.db(check)
            except Exception:  # the database hiccuped: the next round says
                log.exception("view of %s: the alive round failed", desktop.id)
                continue
            if why is not None:
                return why

    async def _ended(self, admission: ViewAdmission, reason: str) -> None:
        who, desktop = admission.viewer, admission.desktop
        seconds = int((self._clock() - admission.opened_at).total_seconds())

        def write() -> None:
            self._store.close(admission.view_id)
            self._audit.record(
                actor=who.username, role=roles_text(who), action="helpdesk-watch-end",
                target=desktop.id, source=admission.source, outcome="closed",
                detail=f"clerk {desktop.assigned_user}: after {seconds} s: {reason[:200]}")
        try:
            await self._blocking.db(write)
        except Exception:  # the database is gone: the view has ended all the same
            log.exception("view of %s: its end could not be recorded", desktop.id)

    async def _refused(self, who: Principal | None, target: str, source: str,
                       why: str) -> None:
        await self._blocking.db(lambda: self._audit.record(
            actor=who.username if who else "-", role=roles_text(who) if who else "-",
            action="helpdesk-watch-start", target=target, source=source, outcome="denied",
            detail=why))
