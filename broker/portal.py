"""The clerk's desktops: the pools they may use, log-off, and the idle policy's news."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from broker.access import roles_text
from broker.activity import TunnelRegistry
from broker.assignment import Assigner, NothingToLogOff, PoolNotFound
from broker.blocking import Blocking
from broker.disconnects import Disconnect, DisconnectStore
from broker.errors import NoDesktop, NoMessage
from broker.idle import DesktopStatus, IdleNotices, Notice
from broker.messages import Message, MessageStore
from broker.readonly_views import ViewStore
from broker.roles import entitled
from broker.sessions import WebSession
from vdi.audit import AuditLog
from vdi.catalog import Catalog
from vdi.domain import ConsoleKind, Pool, PoolKind, utc_now


@dataclass(frozen=True)
class PoolView:
    pool: Pool
    desktop_id: str | None
    notice: Notice | None  # why the idle policy took their desktop, until they connect
    console: ConsoleKind


@dataclass(frozen=True)
class PageStatus:
    """What the desktop page learns each time it asks."""

    desktop: DesktopStatus  # the idle policy's warning or news
    message: Message | None  # the helpdesk's message not acknowledged yet
    viewers: tuple[str, ...]  # the names of the helpdesk members viewing it now
    disconnected: Disconnect | None  # the helpdesk ended the clerk's consoles


@dataclass(frozen=True)
class LoggedOff:
    desktop_id: str
    reverted: bool


class Portal:
    def __init__(self, *, blocking: Blocking, assigner: Assigner, catalog: Catalog,
                 notices: IdleNotices, audit: AuditLog, tunnels: TunnelRegistry,
                 wake_worker: Callable[[], None], messages: MessageStore,
                 views: ViewStore, disconnects: DisconnectStore,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._blocking = blocking
        self._messages = messages
        self._views = views
        self._disconnects = disconnects
        self._assigner = assigner
        self._catalog = catalog
        self._notices = notices
        self._audit = audit
        self._tunnels = tunnels
        self._wake = wake_worker
        self.clock = clock

    async def pools(self, session: WebSession) -> list[PoolView]:
        """The pools the user is entitled to, each with their desktop there, if any."""

        def read() -> list[PoolView]:  # one trip to a database thread
            pools = self._assigner.overview(session.principal)
            notices = self._notices.notices(session.principal.username,
                                            [p.id for p, _ in pools])
            return [PoolView(p, current.id if current else None, notices.get(p.id),
                             current.console.kind if current and current.console
                             else p.console) for p, current in pools]

        return await self._blocking.db(read)

    async def entitled_pool(self, session: WebSession, pool_id: str) -> Pool:
        """The pool, if the user may use it; else PoolNotFound (the same answer for a
        pool that exists but is not theirs)."""
        pool = await self._blocking.db(self._catalog.pool, pool_id)
        if pool is None or not entitled(pool, session.principal.groups):
            raise PoolNotFound(pool_id)
        return pool

    async def pool_kind(self, session: WebSession, pool_id: str) -> PoolKind | None:
        """The pool's kind for its desktop page, or None when it is not the user's."""
        try:
            return (await self.entitled_pool(session, pool_id)).kind
        except PoolNotFound:
            return None

    async def log_off(self, session: WebSession, pool_id: str, source: str) -> LoggedOff:
        """The clerk is done with their desktop in this pool. Floating: it goes back to
        the pool through a fresh clone of the image. Dedicated: it stays theirs, untouched.
        Raises PoolNotFound, NoDesktop."""
        who = session.principal
        await self.entitled_pool(session, pool_id)
        try:
            done = await self._blocking.db(self._assigner.log_off, pool_id, who.username)
        except (PoolNotFound, NothingToLogOff):
            raise NoDesktop(pool_id) from None
        closed = 0
        for tunnel in self._tunnels.open_for(desktop_id=done.desktop.id, username=who.username):
            tunnel.close()
            closed += 1
        if done.reverted:
            self._wake()
        await self._blocking.db(lambda: self._audit.record(
            actor=who.username, role=roles_text(who), action="logoff", target=done.desktop.id,
            source=source, outcome="ok",
            detail=f"{'reverted to the image' if done.reverted else 'kept (dedicated)'}; "
                   f"tunnels closed: {closed}"))
        return LoggedOff(done.desktop.id, done.reverted)

    async def status(self, session: WebSession, pool_id: str) -> PageStatus:
        """The page's view of its desktop: an idle warning to count down, or why the
        desktop went away; the helpdesk's message not yet acknowledged, who of the
        helpdesk is viewing it, whether the helpdesk disconnected the clerk. Raises
        PoolNotFound."""
        await self.entitled_pool(session, pool_id)
        username = session.principal.username

        def read() -> PageStatus:  # one trip to a database thread
            return PageStatus(self._notices.status(username, pool_id),
                              self._messages.pending(username, pool_id),
                              tuple(self._views.viewers(username, pool_id)),
                              self._disconnects.pending(username, pool_id))
        return await self._blocking.db(read)

    async def message_seen(self, session: WebSession, pool_id: str, message_id: int) -> None:
        """The clerk acknowledged the helpdesk's message. Raises PoolNotFound, NoMessage."""
        await self.entitled_pool(session, pool_id)
        if not await self._blocking.db(self._messages.seen, message_id,
                                       session.principal.username):
            raise NoMessage(str(message_id))

    async def still_here(self, session: WebSession, pool_id: str) -> None:
        """The clerk answered the idle warning (counts as input). Raises PoolNotFound,
        NoDesktop (it was taken back already)."""
        await self.entitled_pool(session, pool_id)
        if not await self._blocking.db(self._notices.still_here, session.principal.username,
                                       pool_id):
            raise NoDesktop(pool_id)
