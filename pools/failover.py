"""Hosts that stop answering, come back, or are drained; and the reconciler.

Nothing is deleted because a host did not answer: a host that goes down has its
floating desktops remade elsewhere (the clerk reconnects into a fresh one) and its
dedicated desktops restarted elsewhere when their disks are on shared storage (QEMU's
lock on the disk keeps a copy that still runs on a cut-off host from being started
twice); the rest wait. When it comes back, the reconciler compares what it runs with
the database and removes only what the database has moved away or never knew.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from pools.calls import HostCalls
from pools.hosts import Host, HostRegistry, HostStatus
from pools.hypervisor import DomainInfo, HostUnavailable, Hypervisor, HypervisorError
from pools.jobs.queue import ACTIVE, JobKind, JobState, active_job_desktops, enqueue
from vdi import desktops
from vdi.domain import DesktopState, PoolKind, utc_now
from vdi.models import DesktopRow, JobRow, PoolRow

log = logging.getLogger(__name__)
ON_HOST = (DesktopState.PROVISIONING.value, DesktopState.READY.value,
           DesktopState.ASSIGNED.value, DesktopState.RECLAIMING.value)
# a desktop changed this shortly before the reconciler listed its host is left for the
# next round (another broker's clock may be a little behind)
RECENT = timedelta(seconds=5)
# jobs that already move a desktop off its host
MOVING = (JobKind.RELOCATE.value, JobKind.RESTART.value, JobKind.MIGRATE.value)


@dataclass(frozen=True)
class Moves:
    relocated: int = 0  # floating, remade elsewhere
    restarted: int = 0  # dedicated, started elsewhere from their shared disk
    migrated: int = 0  # dedicated, live-migrated
    waiting: int = 0  # dedicated without shared storage: they wait for their host


def evacuate(s: Session, host: Host, now: datetime, *, live: bool) -> Moves:
    """Ask for every desktop on `host` to be moved, in the caller's transaction.

    live=False (the host is down): floating desktops go to `reclaiming` (their clerk
    loses the desktop, reconnects into another) and are remade elsewhere; dedicated ones
    are restarted elsewhere from shared storage. live=True (a drain for maintenance):
    dedicated desktops are live-migrated; floating spares are remade elsewhere; floating
    desktops in use stay until their clerk logs off (their revert lands elsewhere)."""
    kinds: dict[str, str] = {p: k for p, k in s.execute(select(PoolRow.id, PoolRow.kind))}
    busy: dict[str | None, str] = {d: k for d, k in s.execute(
        select(JobRow.desktop_id, JobRow.kind).where(JobRow.state.in_(ACTIVE)))}
    relocated = restarted = migrated = waiting = 0
    rows = list(s.execute(select(DesktopRow.id, DesktopRow.pool_id, DesktopRow.state).where(
        DesktopRow.host_uri == host.uri, DesktopRow.state.in_(ON_HOST))))
    for desktop_id, pool_id, state in rows:
        if busy.get(desktop_id) in MOVING:
            continue
        # every change below is a compare-and-set on what was read: a clerk who claimed
        # a spare or logged off meanwhile (another broker) wins, this desktop is skipped
        as_read = DesktopState(state)
        dedicated = kinds.get(pool_id) == PoolKind.DEDICATED.value
        if dedicated:
            if state not in (DesktopState.READY.value, DesktopState.ASSIGNED.value):
                continue  # being made: its job retries when the host answers
            if not host.shared_storage:
                desktops.note(s, desktop_id, f"host {host.name} is "
                              f"{'in maintenance' if live else 'down'}; this desktop's disk "
                              "is only there: it waits for the host", on_host=host.uri)
                waiting += 1
                continue
            if not desktops.hold_for_move(s, desktop_id, state=as_read, host_uri=host.uri,
                                          now=now):
                continue
            _supersede(s, desktop_id, now)
            enqueue(s, JobKind.MIGRATE if live else JobKind.RESTART, desktop_id, now)
            if live:
                migrated += 1
            else:
                restarted += 1
            continue
        if live and state == DesktopState.ASSIGNED.value:
            continue  # replaced when its clerk logs off
        if not desktops.reclaim_on_host(s, desktop_id, state=as_read, host_uri=host.uri,
                                        now=now):
            continue
        _supersede(s, desktop_id, now)
        enqueue(s, JobKind.RELOCATE, desktop_id, now)
        relocated += 1
    return Moves(relocated, restarted, migrated, waiting)


def _destroy(host: Hypervisor, *, name: str, keep_disk: bool) -> None:
    host.destroy_desktop(name, keep_disk=keep_disk)


def _supersede(s: Session, desktop_id: str, now: datetime,
               why: str = "its host is being evacuated") -> None:
    """Fail the desktop's pending or running job: another one replaces it (or none is
    needed). A runner still in one of its steps loses its lease at the next step."""
    s.execute(update(JobRow).where(JobRow.desktop_id == desktop_id,
                                   JobRow.state.in_(ACTIVE)).values(
        state=JobState.FAILED.value, error=f"superseded: {why}",
        lease_owner=None, lease_until=None, finished_at=now, updated_at=now))


@dataclass(frozen=True)
class Repairs:
    removed: list[str]  # domains the database does not place on that host
    remade: list[str]  # desktops whose domain was gone or stopped


class HostMonitor:
    """Asks every host whether it answers, marks hosts down and up, and reconciles."""

    def __init__(self, sessions: sessionmaker[Session], calls: HostCalls, *,
                 domain_prefix: str, down_after_s: float = 30.0, check_timeout_s: float = 10.0,
                 reconcile_every_s: float = 60.0,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._sessions = sessions
        self._calls = calls
        self.registry = HostRegistry(sessions, clock)
        self._prefix = domain_prefix
        self._down_after_s = down_after_s
        self._check_timeout_s = check_timeout_s
        self._reconcile_every = timedelta(seconds=reconcile_every_s)
        self._clock = clock
        self._watching_since = clock()
        self._reconciled: dict[str, datetime] = {}

    async def check(self) -> None:
        hosts = await asyncio.to_thread(self.registry.hosts)
        await asyncio.gather(*(self._check(h) for h in hosts))

    async def _check(self, host: Host) -> None:
        try:
            info = await self._calls.run(host.uri, lambda h: h.host_info(),
                                         timeout_s=self._check_timeout_s, probe=True)
        except HostUnavailable as e:
            went_down = await asyncio.to_thread(self.registry.unanswered, host.uri, str(e),
                                                self._down_after_s, self._watching_since)
            if went_down:
                moves = await asyncio.to_thread(self._evacuate, host.uri, False)
                log.error("host %s is down (%s): %s", host.name, e, moves)
            return
        before = await asyncio.to_thread(self.registry.seen, host.uri, info)
        if before is HostStatus.DOWN:
            log.warning("host %s answers again: reconciling it", host.name)
        last = self._reconciled.get(host.uri)
        if before is not HostStatus.UP or last is None or (
                self._clock() - last >= self._reconcile_every):
            try:
                repairs = await self.reconcile(host.uri)
            except HostUnavailable as e:
                log.warning("host %s: reconcile skipped: %s", host.name, e)
                return
            if repairs.removed or repairs.remade:
                log.warning("host %s reconciled: removed %s, remade %s", host.name,
                            repairs.removed, repairs.remade)

    def _evacuate(self, uri: str, live: bool) -> Moves:
        with self._sessions.begin() as s:
            host = self.registry.host(uri)
            assert host is not None
            return evacuate(s, host, self._clock(), live=live)

    async def drain(self, uri_or_name: str) -> Moves:
        """Put a host in maintenance and move its desktops off it (see `evacuate`)."""
        host = await asyncio.to_thread(self.registry.set_maintenance, uri_or_name, True)
        return await asyncio.to_thread(self._evacuate, host.uri, True)

    async def reconcile(self, uri: str) -> Repairs:
        """Compare what the host runs with the database and repair the drift. Raises
        HostUnavailable (and changes nothing) when the host does not answer."""
        listed_at = self._clock()
        domains = await self._calls.run(uri, lambda h: h.list_desktops())
        ours = {d.name: d for d in domains if d.name.startswith(self._prefix)}
        every = await self._calls.run(uri, lambda h: h.list_domain_names())
        # what the broker did not make: no metadata of its own, or another prefix's
        foreign = [n for n in every if n not in ours]
        await asyncio.to_thread(self.registry.note_foreign, uri, foreign)
        plan = await asyncio.to_thread(self._plan_repairs, uri, ours, listed_at)
        removed = []
        for name, keep_disk in plan.strays:
            try:
                await self._calls.run(uri, functools.partial(_destroy, name=name,
                                                             keep_disk=keep_disk))
                removed.append(name)
            except HypervisorError as e:
                log.error("host %s: could not remove stray domain %s: %s", uri, name, e)
        self._reconciled[uri] = self._clock()
        return Repairs(removed=removed, remade=plan.remade)

    @dataclass(frozen=True)
    class _Plan:
        strays: list[tuple[str, bool]]
        remade: list[str]

    def _plan_repairs(self, uri: str, ours: dict[str, DomainInfo],
                      listed_at: datetime) -> _Plan:
        """What to repair. A desktop changed since the host was listed (a job made,
        moved or removed it meanwhile) is left for the next round: the listing is older
        than its row and would make a fresh desktop look vanished or stray. The margin
        covers other brokers' clocks running a little behind this one's."""
        now = self._clock()
        settled = listed_at - RECENT
        strays: list[tuple[str, bool]] = []
        remade: list[str] = []
        with self._sessions.begin() as s:
            kinds: dict[str, str] = {p: k for p, k in s.execute(select(PoolRow.id, PoolRow.kind))}
            busy = active_job_desktops(s)
            restarting = set(s.scalars(select(JobRow.desktop_id).where(
                JobRow.state.in_(ACTIVE), JobRow.kind == JobKind.RESTART.value)))
            rows = {r.domain_name: r for r in s.scalars(select(DesktopRow).where(
                DesktopRow.domain_name.in_(list(ours))))} if ours else {}
            for name in ours:
                row = rows.get(name)
                if row is not None and row.updated_at > settled:
                    continue
                if row is not None and row.state == DesktopState.DELETED.value:
                    strays.append((name, False))  # removed: its disk goes too
                elif row is None:
                    # ours by name but unknown to this database (another broker with the
                    # same prefix, a restored backup): undefine it, never delete a disk
                    strays.append((name, True))
                elif row.host_uri != uri and row.id not in busy:
                    # moved away while this host was gone (or the same daemon registered
                    # twice): the disk may be the desktop's at its new home; keep it
                    strays.append((name, True))
            for row in list(s.scalars(select(DesktopRow).where(
                    DesktopRow.host_uri == uri,
                    DesktopRow.state.in_([DesktopState.READY.value,
                                          DesktopState.ASSIGNED.value])))):
                if row.updated_at > settled or row.power != "on":
                    continue  # changed meanwhile; or shut down or suspended on purpose
                dom = ours.get(row.domain_name)
                if dom is not None and dom.running:
                    # e.g. "its host is down": it answers and runs it
                    desktops.clear_note(s, row.id, on_host=uri)
                    if row.id in restarting:
                        # its host was cut off, not dead: the guest ran on all along (its
                        # disk lock refused the restart elsewhere). Keep it; no restart.
                        _supersede(s, row.id, now, "its host runs it again")
                    continue
                if row.id in busy:
                    continue
                if kinds.get(row.pool_id) == PoolKind.DEDICATED.value:
                    enqueue(s, JobKind.RESTART, row.id, now)  # its disk is kept
                elif desktops.reclaim_on_host(s, row.id, state=DesktopState(row.state),
                                              host_uri=uri, now=now):
                    enqueue(s, JobKind.REVERT, row.id, now)
                else:
                    continue
                remade.append(row.id)
        return self._Plan(strays=strays, remade=remade)
