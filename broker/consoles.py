"""The console use case: grant a one-time token for the user's desktop, admit the
websocket that presents it, and relay it to the desktop's console.

The desktop's endpoint always comes from the broker's own records; the browser never
sees a console password (the broker sets a fresh one through the hypervisor for each
connection and authenticates itself).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from broker.access import roles_text
from broker.activity import TooManyTunnels, Tunnel, TunnelRegistry
from broker.assignment import (
    Assigner,
    AssignmentError,
    ConsoleUnsupported,
    DesktopNotReady,
    HostsUnavailable,
    NotEntitled,
    PoolNotFound,
)
from broker.blocking import Blocking
from broker.disconnects import DisconnectStore
from broker.idle import IdleNotices
from broker.sessions import SessionStore, WebSession
from broker.tokens import ConsoleGrant, TokenRejected, TokenStore
from broker.tunnel import BrowserRefused, BrowserSocket, ConsoleTarget, TunnelError, run_tunnel
from pools.calls import HostCalls
from pools.hypervisor import HypervisorError, new_vnc_password
from vdi import desktops
from vdi.audit import AuditLog
from vdi.domain import ConsoleKind, Desktop, utc_now

log = logging.getLogger(__name__)

# websocket close codes the page understands
NORMAL = 1000
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013
RECLAIMED = 4001  # the idle policy took the desktop back: the page says why, no retry


# The websockets one grant may open, per console kind: a VNC console is one stream.
CHANNELS: dict[ConsoleKind, int] = {ConsoleKind.VNC: 1}
# The relay that speaks each kind's protocol (sans-I/O core + shell). A kind without one
# is refused at the grant: its desktops cannot be reached through the broker yet.
Relay = Callable[..., Awaitable[str]]
RELAYS: dict[ConsoleKind, Relay] = {ConsoleKind.VNC: run_tunnel}


@dataclass(frozen=True)
class ConsoleOffer:
    desktop_id: str
    kind: ConsoleKind
    token: str  # one-time, for the websocket path only
    expires_in: int


class ConsoleRefused(Exception):
    """The websocket may not open a console; `reason` is for the audit log only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Admission:
    grant: ConsoleGrant
    desktop: Desktop
    tunnel: Tunnel
    source: str


@dataclass(frozen=True)
class Closing:
    code: int
    reason: str



async def console_target(calls: HostCalls, desktop: Desktop, valid_s: int) -> ConsoleTarget:
    """Where the broker connects for the desktop's console, with a one-time VNC password
    set on its host now (valid `valid_s`). Raises TunnelError when the host fails."""
    endpoint = desktop.console
    assert endpoint is not None
    password = new_vnc_password()
    try:
        await calls.run(desktop.host_uri, lambda h: h.set_console_password(
            desktop.domain_name, password, valid_s))
    except HypervisorError as e:
        raise TunnelError(f"desktop host unavailable: {e}") from e
    return ConsoleTarget(host=endpoint.host, port=endpoint.port, password=password)

class Consoles:
    def __init__(self, *, blocking: Blocking, db: sessionmaker[Session],
                 sessions: SessionStore, tokens: TokenStore, assigner: Assigner,
                 notices: IdleNotices, audit: AuditLog, tunnels: TunnelRegistry,
                 calls: HostCalls, wake_worker: Callable[[], None],
                 vnc_password_valid_s: int, max_cut_text: int,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._blocking = blocking
        self._db = db
        self._sessions = sessions
        self._tokens = tokens
        self._assigner = assigner
        self._notices = notices
        self._audit = audit
        self._tunnels = tunnels
        self._calls = calls
        self._wake = wake_worker
        self._password_valid_s = vnc_password_valid_s
        self._max_cut_text = max_cut_text
        self._clock = clock

    async def grant(self, session: WebSession, pool_id: str, source: str) -> ConsoleOffer:
        """The user's desktop in the pool (theirs, or a claimed spare) and a one-time token
        for its console. Raises the AssignmentErrors (PoolNotFound for a pool that is not
        theirs); refusals are audited."""
        who = session.principal

        def attempt() -> tuple[Desktop, ConsoleKind, str] | AssignmentError:
            # one trip to a database thread: assignment, news seen, token + its audit
            try:  # a pool of a kind without a relay is refused before a spare is claimed
                desktop = self._assigner.assign(pool_id, who, consoles=RELAYS.keys())
            except AssignmentError as e:
                return e
            kind = desktop.console.kind if desktop.console else ConsoleKind.VNC
            if kind not in RELAYS:  # made before its pool changed kind
                return ConsoleUnsupported(kind.value)
            news = self._notices.notices(who.username, [pool_id])
            with self._db.begin() as s:  # the clerk is back: a reclaim or a disconnect
                if news:  # by the helpdesk is old news
                    self._notices.mark_seen(s, who.username, pool_id, self._clock())
                DisconnectStore.mark_seen(s, who.username, pool_id, self._clock())
            entry = self._audit.row(actor=who.username, role=roles_text(who),
                                    action="connect", target=desktop.id, source=source,
                                    outcome="ok")
            token = self._tokens.issue(username=who.username, session_hash=session.id_hash,
                                       desktop_id=desktop.id, kind=kind.value,
                                       channels=CHANNELS[kind], audit=entry)
            self._audit.written(entry)
            return desktop, kind, token

        outcome = await self._blocking.db(attempt)
        if not isinstance(outcome, AssignmentError):
            self._wake()  # a spare was taken: let the worker top the pool up
            desktop, kind, token = outcome
            return ConsoleOffer(desktop.id, kind, token, self._tokens.ttl_s)
        if isinstance(outcome, DesktopNotReady | HostsUnavailable):
            self._wake()
        if not isinstance(outcome, DesktopNotReady):  # "starting" is not worth a record
            detail = outcome.code
            await self._blocking.db(lambda: self._audit.record(
                actor=who.username, role=roles_text(who), action="connect", target=pool_id,
                source=source,
                outcome="denied" if isinstance(outcome, PoolNotFound | NotEntitled)
                else detail, detail=detail))
        if isinstance(outcome, NotEntitled):  # the same answer as a pool that is not there
            raise PoolNotFound(pool_id) from outcome
        if type(outcome) is AssignmentError:
            log.error("assignment failed: %s", outcome)
        raise outcome

    async def admit(self, token: str, cookie: str | None, source: str,
                    close: Callable[[], None]) -> Admission:
        """Check the token against the session cookie, mark the console open on a desktop
        still this user's and powered on, and register the tunnel (`close` cancels it).
        Raises ConsoleRefused (audited)."""
        session = await self._blocking.db(self._sessions.get, cookie) if cookie else None
        actor = session.principal.username if session else "-"
        try:
            grant = await self._blocking.db(lambda: self._tokens.consume(
                token, session_hash=session.id_hash if session else None,
                kind=None))  # the grant's kind is checked against the desktop below
        except TokenRejected as e:
            await self._deny(actor, source, e.reason)
            raise ConsoleRefused(e.reason) from None
        # compare-and-set: the console opens only on a desktop still this clerk's and on
        # (a reclaim that won first makes this fail; one that comes later sees the console)
        desktop = await self._blocking.db(self._mark_console_open, grant)
        if desktop is None:
            await self._deny(grant.username, source, "desktop no longer assigned")
            raise ConsoleRefused("desktop no longer assigned")
        try:
            tunnel = self._tunnels.open(username=grant.username, session_hash=grant.session_hash,
                                        desktop_id=grant.desktop_id, close=close)
        except TooManyTunnels:
            # marked open above: unless another console of this broker holds it, it is not
            await self._blocking.db(self._mark_console_closed, grant)
            await self._deny(grant.username, source, "too many consoles open")
            raise ConsoleRefused("too many consoles open") from None
        return Admission(grant, desktop, tunnel, source)

    async def relay(self, admission: Admission, browser: BrowserSocket) -> Closing:
        """Relay the admitted console until either side ends it; returns how to close the
        websocket. Records the disconnect (and the last console closed here)."""
        desktop, grant, tunnel = admission.desktop, admission.grant, admission.tunnel
        assert desktop.console is not None
        endpoint = desktop.console
        run_relay = RELAYS[endpoint.kind]  # admitted only for a kind that has one

        async def prepare() -> ConsoleTarget:
            return await console_target(self._calls, desktop, self._password_valid_s)

        closing = Closing(NORMAL, "bye")
        reason = "closed"
        try:
            reason = await run_relay(browser, prepare,
                                      on_input=lambda: self._tunnels.input_seen(grant.desktop_id),
                                      max_cut_text=self._max_cut_text,
                                      setup_lock=self._tunnels.setup_lock(grant.desktop_id))
        except BrowserRefused as e:
            reason = str(e)
            log.info("console %s: %s", grant.desktop_id, e)
            closing = Closing(POLICY_VIOLATION, "handshake refused")
        except TunnelError as e:
            reason = str(e)
            log.warning("console %s: %s", grant.desktop_id, e)
            closing = Closing(TRY_AGAIN_LATER, "desktop console unavailable")
        except asyncio.CancelledError:
            if tunnel.closed_because:  # the idle policy took the desktop back
                reason = f"closed by the broker: {tunnel.closed_because}"
                closing = Closing(RECLAIMED, tunnel.closed_because)
            else:
                reason = "closed by the broker (session ended)"
                closing = Closing(POLICY_VIOLATION, "session ended")
        except Exception as e:  # report it and close; one bad tunnel must not hurt others
            reason = f"tunnel failed: {e.__class__.__name__}"
            log.exception("console %s failed", grant.desktop_id)
            closing = Closing(INTERNAL_ERROR, "tunnel error")
        finally:
            self._tunnels.closed(tunnel)
            await self._blocking.db(self._record_disconnect, grant, reason, admission.source)
        return closing

    def _mark_console_open(self, grant: ConsoleGrant) -> Desktop | None:
        with self._db.begin() as s:
            return desktops.open_console(s, grant.desktop_id, grant.username,
                                         ConsoleKind(grant.kind), self._clock())

    def _mark_console_closed(self, grant: ConsoleGrant) -> None:
        if not self._tunnels.open_for(desktop_id=grant.desktop_id):  # its last console here
            with self._db.begin() as s:  # (another broker's heartbeat says if it has one)
                desktops.close_console(s, grant.desktop_id, grant.username, self._clock())

    def _record_disconnect(self, grant: ConsoleGrant, reason: str, source: str) -> None:
        self._mark_console_closed(grant)
        self._audit.record(actor=grant.username, role="-", action="console",
                           target=grant.desktop_id, source=source, outcome="closed",
                           detail=reason[:300])

    async def refuse_origin(self, source: str) -> None:
        """Audit a websocket refused for its Origin (the caller closes it)."""
        await self._deny("-", source, "bad origin")

    async def _deny(self, actor: str, source: str, reason: str) -> None:
        await self._blocking.db(lambda: self._audit.record(
            actor=actor, role="-", action="console", target="-", source=source,
            outcome="denied", detail=reason))
