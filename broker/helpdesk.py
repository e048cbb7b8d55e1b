"""The helpdesk finds a clerk and sees their desktops and the day's story, within the
offices it serves (broker.offices): a clerk of another office, or a desktop of another
office's pool, is answered exactly as one that does not exist. Every look is recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.access import roles_text
from broker.activity import TunnelRegistry
from broker.assignment import Assigner, NothingToLogOff, PoolNotFound
from broker.auth.directory import Directory, DirectoryUnavailable, DirectoryUser
from broker.blocking import Blocking
from broker.disconnects import DisconnectStore
from broker.errors import BadRequest, BrokerError
from broker.messages import MESSAGE_CHARS, MessageStore
from broker.offices import OfficeStore, Scope, offices_of, scope_of
from pools.calls import HostCalls
from pools.hypervisor import DomainNotFound, Hypervisor, HypervisorError
from vdi.audit import AuditLog
from vdi.catalog import Catalog, desktop_from_row
from vdi.domain import Desktop, DesktopState, Office, Principal, utc_now
from vdi.models import AuditRow, DesktopRow, PoolRow, ReclaimRow, SessionRow

T = TypeVar("T")
TIMELINE_DAYS = 7
SCREEN_NOTE_EVERY = timedelta(minutes=5)
ACTIONS = ("reboot", "logoff", "reset", "disconnect")
SEARCH_WIDE, SEARCH_SHOWN = 100, 20
REASON_CHARS = (4, 500)
TIMELINE_MAX = 200
# what a clerk's own records say, as the timeline shows them
CLERK_ACTIONS = ("login", "logout", "connect", "console", "logoff", "session-end",
                 "session-roles")


class ClerkNotFound(BrokerError):
    """No such clerk, or one the caller does not serve: the same answer for both."""


class DesktopNotFound(BrokerError):
    """No such desktop in use, or one the caller does not serve: the same answer."""


class DesktopNotRunning(BrokerError):
    """The desktop is the clerk's but not running now (suspended or shut down by the
    idle policy): it has no screen to show and nothing to reboot."""


class HostNotAnswering(BrokerError):
    """The desktop's host does not answer now."""


@dataclass(frozen=True)
class Clerk:
    username: str
    display_name: str
    offices: tuple[str, ...]  # ids of the offices they belong to


@dataclass(frozen=True)
class Event:
    at: datetime
    what: str  # an audit action, or reclaim:<action>
    outcome: str
    source: str  # the address or counter it came from
    detail: str


@dataclass(frozen=True)
class ClerkView:
    clerk: Clerk
    desktops: tuple[Desktop, ...]
    events: tuple[Event, ...]  # newest first


class Helpdesk:
    def __init__(self, *, blocking: Blocking, db: sessionmaker[Session], directory: Directory,
                 audit: AuditLog, calls: HostCalls, assigner: Assigner,
                 tunnels: TunnelRegistry, wake_worker: Callable[[], None],
                 directory_deadline_s: float,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._blocking = blocking
        self._calls = calls
        self._assigner = assigner
        self._tunnels = tunnels
        self._wake = wake_worker
        self._screens_noted: dict[tuple[str, str], datetime] = {}
        self._db = db
        self._directory = directory
        self._deadline_s = directory_deadline_s
        self._audit = audit
        self._offices = OfficeStore(db)
        self._messages = MessageStore(db, clock)
        self._disconnects = DisconnectStore(db, clock)
        self._catalog = Catalog(db)
        self._clock = clock

    async def _ask(self, fn: Callable[[str], T], arg: str) -> T:
        try:
            return await self._blocking.directory(fn, arg, deadline_s=self._deadline_s)
        except TimeoutError as e:
            raise DirectoryUnavailable("the directory did not answer in time") from e

    async def _noted(self, who: Principal, action: str, target: str, source: str,
                     detail: str) -> None:
        await self._blocking.db(lambda: self._audit.record(
            actor=who.username, role=roles_text(who), action=action, target=target,
            source=source, outcome="ok", detail=detail))

    async def find(self, who: Principal, text: str, source: str) -> list[Clerk]:
        """The clerks the caller serves whose account starts with `text` or whose name
        holds it."""
        offices = await self._blocking.db(self._offices.offices)
        # more people than are shown, so that those of other offices do not crowd out
        # the caller's own (the scope is applied to the groups the directory gives)
        people = await self._ask(lambda t: self._directory.search(t, SEARCH_WIDE), text)
        scope = scope_of(who, offices)
        found = [c for c in (_clerk(u, offices) for u in people)
                 if _serves(scope, c)][:SEARCH_SHOWN]
        await self._noted(who, "helpdesk-search", "-", source,
                          f"{text[:64]!r}: {len(found)} clerk(s)")
        return found

    async def clerk(self, who: Principal, username: str, source: str) -> ClerkView:
        """A clerk the caller serves: their desktops (in pools the caller may see) and
        the last days' events. Raises ClerkNotFound."""
        offices = await self._blocking.db(self._offices.offices)
        user = await self._ask(self._directory.lookup, username)
        scope = scope_of(who, offices)
        if user is None or not _serves(scope, clerk := _clerk(user, offices)):
            raise ClerkNotFound(username)
        desktops, events = await self._blocking.db(lambda: self._read(clerk.username, scope))
        await self._noted(who, "helpdesk-view", clerk.username, source,
                          f"{len(desktops)} desktop(s), {len(events)} event(s)")
        return ClerkView(clerk, desktops, events)

    async def screen(self, who: Principal, desktop_id: str, source: str) -> bytes:
        """The screen of a desktop in use by a clerk the caller serves, as PNG. The first
        look at a desktop is recorded, then one every SCREEN_NOTE_EVERY while the
        console refreshes it. Raises DesktopNotFound, HostUnavailable."""
        desktop = await self.served_desktop(who, desktop_id)
        png = await self._on_host(desktop, lambda host: host.screenshot(desktop.domain_name))
        key, now = (who.username, desktop.id), self._clock()
        if len(self._screens_noted) > 1000:  # forget looks long past
            self._screens_noted = {k: t for k, t in self._screens_noted.items()
                                   if now - t < SCREEN_NOTE_EVERY}
        last = self._screens_noted.get(key)
        if last is None or now - last >= SCREEN_NOTE_EVERY:
            self._screens_noted[key] = now
            await self._noted(who, "helpdesk-screen", desktop.id, source,
                              f"clerk {desktop.assigned_user}")
        return png

    async def act(self, who: Principal, desktop_id: str, action: str, reason: str,
                  source: str) -> str:
        """Do `action` to a served clerk's desktop in use, for `reason` (recorded with
        it): "reboot" (the reset button: the guest starts again, its disk kept),
        "logoff" (the clerk's use ends: a floating desktop goes back to the pool
        through a fresh clone, a dedicated one stays theirs; their consoles close),
        "reset" (a floating desktop made afresh from its image), "disconnect" (the
        clerk's consoles to it close on every broker, the desktop keeps running and
        stays theirs; their page says the helpdesk did it). What was done, for the
        helpdesk. Raises DesktopNotFound, BadRequest, HostUnavailable."""
        if action not in ACTIONS:
            raise BadRequest(f"action: one of {', '.join(ACTIONS)}")
        reason = clean_reason(reason)
        desktop = await self.served_desktop(who, desktop_id)
        clerk = desktop.assigned_user or "-"
        if action == "reboot":
            await self._on_host(desktop, lambda host: host.reset_desktop(desktop.domain_name))
            done = "rebooted"
        elif action == "disconnect":
            # recorded first: a broker whose round comes before the kicks here sees it
            await self._blocking.db(lambda: self._disconnects.record(
                desktop_id=desktop.id, pool_id=desktop.pool_id, username=clerk,
                by_user=who.username, by_name=who.display_name, reason=reason))
            kicked = self._tunnels.open_for(desktop_id=desktop.id, username=clerk)
            for tunnel in kicked:
                self._tunnels.kick(tunnel, "helpdesk")
            done = f"disconnected ({len(kicked)} console(s) here; other brokers follow)"
        else:
            pool = await self._blocking.db(self._catalog.pool, desktop.pool_id)
            if action == "reset" and (pool is None or pool.persistent):
                raise BadRequest("A dedicated desktop holds its clerk's files: it is never "
                                 "reset to its image. Reboot it, or log the clerk off.")
            try:
                off = await self._blocking.db(self._assigner.log_off, desktop.pool_id, clerk)
            except (PoolNotFound, NothingToLogOff):
                raise DesktopNotFound(desktop_id) from None
            for tunnel in self._tunnels.open_for(desktop_id=desktop.id, username=clerk):
                self._tunnels.kick(tunnel, "helpdesk")
            if off.reverted:
                self._wake()
            done = ("logged off; the desktop is made afresh from its image" if off.reverted
                    else "logged off; the desktop stays the clerk's (dedicated)")
        await self._blocking.db(lambda: self._audit.record(
            actor=who.username, role=roles_text(who), action=f"helpdesk-{action}",
            target=desktop.id, source=source, outcome="ok",
            detail=f"clerk {clerk}: {done}; reason: {reason}"))
        return done

    async def message(self, who: Principal, desktop_id: str, text: str,
                      source: str) -> int:
        """A message to the clerk of a served desktop in use, shown on their desktop's
        page until they acknowledge it. Raises DesktopNotFound, BadRequest."""
        text = text.strip()
        if not MESSAGE_CHARS[0] <= len(text) <= MESSAGE_CHARS[1] or "\0" in text:
            raise BadRequest(f"A message has {MESSAGE_CHARS[0]} to {MESSAGE_CHARS[1]} "
                             "characters.")
        desktop = await self.served_desktop(who, desktop_id)
        clerk = desktop.assigned_user or "-"
        message_id = await self._blocking.db(lambda: self._messages.send(
            desktop_id=desktop.id, pool_id=desktop.pool_id, username=clerk,
            sender=who.username, sender_name=who.display_name, text=text))
        await self._noted(who, "helpdesk-message", desktop.id, source,
                          f"to {clerk}: {text}")
        return message_id

    async def _on_host(self, desktop: Desktop, fn: Callable[[Hypervisor], T]) -> T:
        try:
            return await self._calls.run(desktop.host_uri, fn)
        except DomainNotFound as e:
            raise DesktopNotRunning(desktop.id) from e
        except HypervisorError as e:  # HostUnavailable among them
            raise HostNotAnswering(str(e)) from e

    async def served_desktop(self, who: Principal, desktop_id: str) -> Desktop:
        """A desktop in use whose pool is of an office the caller serves, or of the
        district and held by a clerk the caller serves. Raises DesktopNotFound."""
        def read() -> tuple[Desktop | None, str | None, list[Office], list[str]]:
            d = self._catalog.desktop(desktop_id)
            pool = self._catalog.pool(d.pool_id) if d else None
            groups: list[str] = []
            if d is not None and d.assigned_user and pool is not None and pool.office is None:
                with self._db() as s:
                    groups = s.scalars(select(SessionRow.groups).where(
                        SessionRow.username == d.assigned_user)
                        .order_by(SessionRow.created_at.desc()).limit(1)).first() or []
            return d, pool.office if pool else None, self._offices.offices(), groups
        # one database trip, and no directory lookup: how long the answer takes, or a
        # directory outage, never tells an unserved desktop from a missing one
        desktop, office, offices, groups = await self._blocking.db(read)
        scope = scope_of(who, offices)
        if desktop is None or desktop.assigned_user is None or \
                desktop.state is not DesktopState.ASSIGNED:
            raise DesktopNotFound(desktop_id)
        if office is not None:
            if scope.covers(office):
                return desktop
            raise DesktopNotFound(desktop_id)
        # a district pool's desktop: served when its clerk (as their newest session
        # recorded their groups) belongs to an office the caller serves
        if not (scope.district or scope.offices & offices_of(groups, offices)):
            raise DesktopNotFound(desktop_id)
        return desktop

    def _read(self, username: str, scope: Scope) -> tuple[tuple[Desktop, ...],
                                                          tuple[Event, ...]]:
        since = self._clock() - timedelta(days=TIMELINE_DAYS)
        with self._db() as s:
            # the clerk's own desktops only, with their pools' offices: one query, not
            # every desktop of the district
            held = s.execute(select(DesktopRow, PoolRow.office).join(
                PoolRow, PoolRow.id == DesktopRow.pool_id).where(
                DesktopRow.assigned_user == username,
                DesktopRow.state != DesktopState.DELETED.value)
                .order_by(DesktopRow.created_at)).all()
            desktops = tuple(desktop_from_row(row) for row, office in held
                             if office is None or scope.covers(office))
            audits = s.scalars(select(AuditRow).where(
                AuditRow.at >= since, AuditRow.actor == username,
                AuditRow.action.in_(CLERK_ACTIONS))
                .order_by(AuditRow.id.desc()).limit(TIMELINE_MAX)).all()
            reclaims = s.scalars(select(ReclaimRow).where(
                ReclaimRow.at >= since, ReclaimRow.username == username)
                .order_by(ReclaimRow.at.desc()).limit(TIMELINE_MAX)).all()
        events = [Event(a.at, a.action, a.outcome, a.source, a.detail) for a in audits]
        events += [Event(r.at, f"reclaim:{r.action}", "ok", r.pool_id, r.reason)
                   for r in reclaims]
        events.sort(key=lambda e: e.at, reverse=True)
        return desktops, tuple(events[:TIMELINE_MAX])


def clean_reason(reason: str) -> str:
    """The reason for an act, its white space made single; raises BadRequest unless it
    has REASON_CHARS characters, all printable."""
    reason = " ".join(reason.split())
    if not REASON_CHARS[0] <= len(reason) <= REASON_CHARS[1] or not reason.isprintable():
        raise BadRequest(f"Give a reason of {REASON_CHARS[0]} to {REASON_CHARS[1]} "
                         "characters.")
    return reason


def _clerk(user: DirectoryUser, offices: list[Office]) -> Clerk:
    return Clerk(user.username, user.display_name,
                 tuple(sorted(offices_of(user.groups, offices))))


def _serves(scope: Scope, clerk: Clerk) -> bool:
    return scope.district or bool(scope.offices & set(clerk.offices))
