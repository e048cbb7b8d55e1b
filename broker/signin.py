"""Signing in and out, and the session behind a cookie: the clerk's first use case.

The identity kept for the session, desktops, throttling and audit is the one the
directory returns, never the string as typed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.access import roles_text
from broker.activity import TunnelRegistry
from broker.auth.directory import Directory, DirectoryUnavailable, InvalidCredentials
from broker.auth.throttle import LoginThrottle, Throttled
from broker.blocking import Blocking
from broker.errors import NoAccess, RoleConflict
from broker.roles import entitled, mapped_roles, roles_for, withheld
from broker.sessions import SessionStore, WebSession
from broker.tokens import TokenStore
from vdi.audit import AuditLog
from vdi.catalog import Catalog
from vdi.domain import Principal, utc_now
from vdi.settings import RoleMap

log = logging.getLogger(__name__)
# after a failed re-check lookup the directory is left alone this long (sessions kept)
RECHECK_BACKOFF = timedelta(seconds=30)
RECHECKS_AT_ONCE = 4


@dataclass(frozen=True)
class SignedIn:
    cookie: str  # the session's secret, for the cookie only
    session: WebSession


class SignIn:
    def __init__(self, *, blocking: Blocking, directory: Directory, throttle: LoginThrottle,
                 sessions: SessionStore, tokens: TokenStore, catalog: Catalog,
                 audit: AuditLog, tunnels: TunnelRegistry,
                 role_map: Callable[[], RoleMap],
                 directory_deadline_s: float, recheck_s: float, grant_confirm_s: float,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._blocking = blocking
        self._directory = directory
        self._throttle = throttle
        self._sessions = sessions
        self._tokens = tokens
        self._catalog = catalog
        self._audit = audit
        self._tunnels = tunnels
        self._role_map = role_map
        self._deadline_s = directory_deadline_s
        self._recheck = timedelta(seconds=recheck_s)
        self._grant_confirm = timedelta(seconds=grant_confirm_s)
        self._clock = clock
        self._directory_down_until: datetime | None = None

    async def session(self, cookie: str | None) -> WebSession | None:
        """The live session behind a cookie value, or None. Its user is re-checked with
        the directory when the last check is older than the re-check bound: a user gone
        from the directory, or left with no role and no pool, loses the session here."""
        if not cookie:
            return None
        session = await self._blocking.db(self._sessions.get, cookie)
        if session is None:
            return None
        if self._clock() - session.checked_at >= self._recheck:
            return await self.recheck(session)
        return session

    async def confirmed(self, session: WebSession) -> WebSession | None:
        """The session as the directory confirms it now, for a console grant: asked
        unless it confirmed the user within `grant_confirm_s` (the sign-in a moment ago
        was such a confirmation: a clerk's sign-in and first connect ask it once)."""
        if self._clock() - session.checked_at <= self._grant_confirm:
            return session
        return await self.recheck(session)

    async def recheck(self, session: WebSession) -> WebSession | None:
        """Ask the directory about the session's user now: the session with the roles
        and groups as they are, or None (ended: account gone or no access left).

        While the directory does not answer, the session is kept as it was: an outage
        must not throw every clerk out. After a failed lookup the directory is left
        alone for RECHECK_BACKOFF (sessions are kept meanwhile), so an outage cannot
        stall every request, nor the broker's rounds, for a lookup's deadline each."""
        who = session.principal
        now = self._clock()
        if self._directory_down_until is not None and now < self._directory_down_until:
            return session
        try:
            user = await self._blocking.directory(self._directory.lookup, who.username,
                                                  deadline_s=self._deadline_s)
        except (DirectoryUnavailable, TimeoutError) as e:
            self._directory_down_until = self._clock() + RECHECK_BACKOFF
            log.warning("re-checks postponed for %d s (%s): %s",
                        RECHECK_BACKOFF.total_seconds(), who.username, e or "no answer")
            return session
        self._directory_down_until = None
        principal = None
        if user is not None:
            roles = roles_for(user.groups, self._role_map())
            principal = Principal(username=user.username, display_name=user.display_name,
                                  roles=roles, groups=user.groups)

        def confirm_or_end() -> tuple[WebSession | None, bool]:  # one database trip
            """(the session as confirmed or None, whether this re-check ended it)"""
            if principal is not None and (principal.roles or any(
                    entitled(p, principal.groups) for p in self._catalog.pools())):
                return self._sessions.confirm(session, principal), False
            self._sessions.end(session.id_hash)
            self._tokens.revoke_session(session.id_hash)
            return None, True

        kept, ended_here = await self._blocking.db(confirm_or_end)
        if kept is None and not ended_here:  # signed out meanwhile: nothing to record
            return None
        if kept is None:
            closed = self._tunnels.close_session(session.id_hash)
            why = "gone from the directory" if user is None else "no role or pool left"
            await self._blocking.db(lambda: self._audit.record(
                actor=who.username, role=roles_text(who), action="session-end", target="-",
                source="directory", outcome="ok", detail=f"{why}; tunnels closed: {closed}"))
        elif kept.principal.roles != who.roles or kept.principal.groups != who.groups:
            await self._blocking.db(lambda: self._audit.record(
                actor=who.username, role=roles_text(kept.principal), action="session-roles",
                target="-", source="directory", outcome="ok",
                detail=f"roles were {roles_text(who)}"))
        return kept

    async def recheck_consoles(self) -> None:
        """Re-check the users of the consoles open here whose check is older than the
        bound, a few at a time: a clerk removed from the directory loses an open console
        within it even if their page asks nothing."""
        hashes = {t.session_hash for t in self._tunnels.open_for()}
        if not hashes:
            return
        due = await self._blocking.db(self._sessions.unchecked_among, hashes,
                                      self._clock() - self._recheck)
        limit = asyncio.Semaphore(RECHECKS_AT_ONCE)

        async def one(session: WebSession) -> None:
            async with limit:
                await self.recheck(session)

        await asyncio.gather(*(one(s) for s in due))

    async def run_console_rechecks(self, every_s: float) -> None:
        """recheck_consoles every `every_s` until cancelled (its own task: a slow
        directory never holds up the consoles' signals)."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.recheck_consoles()
            except Exception:  # the next round tries again
                log.exception("re-checking the users of open consoles failed")

    async def sign_in(self, username: str, password: str, source: str) -> SignedIn:
        """Check the password with the directory and open a session. Raises Throttled,
        InvalidCredentials (the same for every bad login), DirectoryUnavailable, NoAccess.
        Every outcome is audited."""
        username = username.strip()
        typed = username[:128] or "-"
        try:  # counted before the directory is asked (see broker.auth.throttle)
            attempt = await self._blocking.db(self._throttle.reserve, username, source)
        except Throttled:
            await self._record(typed, "-", source, "throttled")
            raise
        try:
            user = await self._blocking.directory(
                self._directory.authenticate, username, password, deadline_s=self._deadline_s)
        except InvalidCredentials:
            attempt.failed()
            await self._record(typed, "-", source, "denied")
            raise
        except (DirectoryUnavailable, TimeoutError) as e:
            await self._blocking.db(attempt.cancel)  # the password was not checked
            log.warning("login: directory unavailable: %s", e or "no answer in time")
            await self._record(typed, "-", source, "directory_unavailable")
            raise DirectoryUnavailable(str(e) or "directory did not answer in time") from e
        mapped = mapped_roles(user.groups, self._role_map())
        roles, conflict = mapped - withheld(mapped), withheld(mapped)
        principal = Principal(username=user.username, display_name=user.display_name,
                              roles=roles, groups=user.groups)
        if conflict:  # 三员分立: recorded at every sign-in until the groups are put right
            names = ", ".join(sorted(r.value for r in conflict))
            await self._blocking.db(lambda: self._audit.record(
                actor=user.username, role=roles_text(principal), action="role-conflict",
                target="-", source=source, outcome="refused",
                detail=f"groups map to {names}: no one holds two administrator roles, "
                       "so none of them is granted"))
        entry = self._audit.row(actor=user.username, role=roles_text(principal),
                                action="login", target="-", source=source, outcome="ok")

        def open_session() -> tuple[str, WebSession] | None:
            # one trip to a database thread: the throttle told, the access check and the
            # new session. The password was right: the account's failures are forgiven
            # even if it turns out to have no access.
            attempt.succeeded(user.username)
            if not roles and not any(entitled(p, user.groups) for p in self._catalog.pools()):
                return None
            return self._sessions.create(principal, source, audit=entry)

        opened = await self._blocking.db(open_session)
        if opened is None:
            await self._record(user.username, "-", source, "no_access")
            raise RoleConflict(user.username) if conflict else NoAccess(user.username)
        self._audit.written(entry)
        cookie, session = opened
        return SignedIn(cookie, session)

    async def sign_out(self, session: WebSession, source: str) -> None:
        """End the session, its unused console tokens and its consoles open here (other
        brokers close theirs when their next heartbeat finds the session ended)."""
        await self._blocking.db(self._sessions.end, session.id_hash)
        await self._blocking.db(self._tokens.revoke_session, session.id_hash)
        closed = self._tunnels.close_session(session.id_hash)
        await self._blocking.db(lambda: self._audit.record(
            actor=session.principal.username, role=roles_text(session.principal),
            action="logout", target="-", source=source, outcome="ok",
            detail=f"tunnels closed: {closed}"))

    async def _record(self, actor: str, role: str, source: str, outcome: str) -> None:
        await self._blocking.db(lambda: self._audit.record(
            actor=actor, role=role, action="login", target="-", source=source,
            outcome=outcome))
