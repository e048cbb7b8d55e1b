"""The libvirt hosts: their records, where a new desktop goes, and whether they answer.

Placement is a pure function of the hosts' capacity and what the database says runs on
them; the host monitor asks every host for its capacity on a timer and is the only one
that marks a host down: after `down_after_s` without an answer, never after one failed
call. What follows a host going down (moving its desktops) is in `pools.failover`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from pools.hypervisor import HostInfo
from vdi.domain import Arch, DesktopState, Pool, utc_now
from vdi.models import DesktopRow, HostRow, PoolRow

log = logging.getLogger(__name__)


class HostStatus(enum.StrEnum):
    UNKNOWN = "unknown"  # not asked yet since it was added
    UP = "up"
    DOWN = "down"


class HostError(ValueError):
    """A host definition or change is refused; the message says why."""


MAX_FOREIGN = 50  # names of domains the broker did not make kept per host


@dataclass(frozen=True)
class Host:
    uri: str
    name: str
    graphics_listen: str
    storage_pool: str
    storage_dir: str
    log_dir: str
    shared_storage: bool = False
    maintenance: bool = False
    status: HostStatus = HostStatus.UNKNOWN
    memory_mib: int = 0
    cpus: int = 0
    arches: frozenset[Arch] = frozenset()  # the guest architectures it runs, once seen
    last_seen_at: datetime | None = None
    down_since: datetime | None = None
    error: str | None = None
    # domains on it that this broker did not make, as its last reconcile saw them
    foreign_domains: tuple[str, ...] = ()

    @property
    def accepts_desktops(self) -> bool:
        return self.status is HostStatus.UP and not self.maintenance


def arches_of(text: str | None) -> frozenset[Arch]:
    """The architectures a host record lists (none until it answered; unknown names
    skipped)."""
    known = {a.value: a for a in Arch}
    return frozenset(known[n] for n in (text or "").split(",") if n in known)


def host_from_row(row: HostRow) -> Host:
    return Host(uri=row.uri, name=row.name, graphics_listen=row.graphics_listen,
                storage_pool=row.storage_pool, storage_dir=row.storage_dir,
                log_dir=row.log_dir, shared_storage=row.shared_storage,
                maintenance=row.maintenance, status=HostStatus(row.status),
                memory_mib=row.memory_mib, cpus=row.cpus, arches=arches_of(row.arches),
                last_seen_at=row.last_seen_at,
                down_since=row.down_since, error=row.error,
                foreign_domains=tuple(row.foreign_domains or ()))


# --- placement (pure) --------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    memory_overcommit: float = 1.0
    cpu_overcommit: float = 8.0
    max_provisioning: int = 2


@dataclass(frozen=True)
class HostLoad:
    """A host as placement sees it: capacity, and what the database has placed there."""

    host: Host
    memory_mib: int = 0  # of the desktops placed there (any live state)
    vcpus: int = 0
    in_work: int = 0  # desktops being made or remade there now

    def plus(self, pool: Pool) -> HostLoad:
        return replace(self, memory_mib=self.memory_mib + pool.memory_mib,
                       vcpus=self.vcpus + pool.vcpus, in_work=self.in_work + 1)


def fits(load: HostLoad, pool: Pool, limits: Limits) -> bool:
    h = load.host
    return (h.accepts_desktops and (not pool.hosts or h.uri in pool.hosts)
            and load.memory_mib + pool.memory_mib <= h.memory_mib * limits.memory_overcommit
            and load.vcpus + pool.vcpus <= h.cpus * limits.cpu_overcommit)


def place(pool: Pool, loads: Iterable[HostLoad], limits: Limits,
          avoid: str | None = None) -> HostLoad | None:
    """The host a new desktop of `pool` goes to: of those it fits on (up, not in
    maintenance, allowed by the pool, within the overcommit ratios), the one with the
    largest share of memory left after it, then the fewest desktops being made there
    (each host makes at most `limits.max_provisioning` at once: the job runner waits for
    a slot), then the fewest vCPUs placed, then by name. None: no host has room now."""
    candidates = [ld for ld in loads if ld.host.uri != avoid and fits(ld, pool, limits)]
    if not candidates:
        return None

    def key(ld: HostLoad) -> tuple[float, int, int, str]:
        capacity = ld.host.memory_mib * limits.memory_overcommit
        left = (capacity - ld.memory_mib - pool.memory_mib) / capacity
        return (-round(left, 3), ld.in_work, ld.vcpus, ld.host.name)

    return min(candidates, key=key)


LIVE = (DesktopState.PROVISIONING.value, DesktopState.READY.value,
        DesktopState.ASSIGNED.value, DesktopState.RECLAIMING.value,
        DesktopState.MAINTENANCE.value)
IN_WORK = (DesktopState.PROVISIONING.value, DesktopState.RECLAIMING.value)


def host_loads(s: Session, hosts: list[Host]) -> dict[str, HostLoad]:
    """What the database has placed on each host (one query)."""
    loads = {h.uri: HostLoad(h) for h in hosts}
    rows = s.execute(
        select(DesktopRow.host_uri, DesktopRow.state, func.count(),
               func.sum(PoolRow.memory_mib), func.sum(PoolRow.vcpus))
        .join(PoolRow, PoolRow.id == DesktopRow.pool_id)
        # a desktop shut down or suspended by the idle policy holds no memory or vCPU
        .where(DesktopRow.state.in_(LIVE), DesktopRow.power == "on")
        .group_by(DesktopRow.host_uri, DesktopRow.state))
    for uri, state, n, memory, vcpus in rows:
        ld = loads.get(uri)
        if ld is None:
            continue
        loads[uri] = replace(ld, memory_mib=ld.memory_mib + int(memory or 0),
                             vcpus=ld.vcpus + int(vcpus or 0),
                             in_work=ld.in_work + (int(n) if state in IN_WORK else 0))
    return loads


# --- records ----------------------------------------------------------------------------


class HostRegistry:
    def __init__(self, sessions: sessionmaker[Session],
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._sessions = sessions
        self._clock = clock

    def hosts(self) -> list[Host]:
        with self._sessions() as s:
            return [host_from_row(r) for r in s.scalars(select(HostRow).order_by(HostRow.name))]

    def host(self, uri_or_name: str) -> Host | None:
        with self._sessions() as s:
            row = s.get(HostRow, uri_or_name) or s.scalars(
                select(HostRow).where(HostRow.name == uri_or_name)).first()
            return host_from_row(row) if row else None

    def add(self, host: Host) -> Host:
        """Register a host, or change how it is reached (not its state)."""
        if not host.uri or "://" not in host.uri:
            raise HostError(f"host URI {host.uri!r}: a libvirt URI such as "
                            "qemu+tcp://10.0.0.2/system is needed")
        if not host.name or not host.name.replace("-", "").isalnum() or len(host.name) > 64:
            raise HostError("host name: 1-64 letters, digits or '-'")
        with self._sessions.begin() as s:
            clash = s.scalars(select(HostRow).where(HostRow.name == host.name,
                                                    HostRow.uri != host.uri)).first()
            if clash is not None:
                raise HostError(f"host name {host.name!r} is taken by {clash.uri}")
            row = s.get(HostRow, host.uri)
            if row is None:
                row = HostRow(uri=host.uri, maintenance=False, status=HostStatus.UNKNOWN.value,
                              memory_mib=0, cpus=0, created_at=self._clock())
                s.add(row)
            row.name = host.name
            row.graphics_listen = host.graphics_listen
            row.storage_pool = host.storage_pool
            row.storage_dir = host.storage_dir
            row.log_dir = host.log_dir
            row.shared_storage = host.shared_storage
            return host_from_row(row)

    def set_maintenance(self, uri_or_name: str, on: bool) -> Host:
        host = self.host(uri_or_name)
        if host is None:
            raise HostError(f"no such host: {uri_or_name}")
        with self._sessions.begin() as s:
            s.execute(update(HostRow).where(HostRow.uri == host.uri).values(maintenance=on))
        return replace(host, maintenance=on)

    def note_foreign(self, uri: str, names: list[str]) -> None:
        """The domains on the host that the broker did not make (at most MAX_FOREIGN
        names kept; an empty list clears the alert)."""
        with self._sessions.begin() as s:
            s.execute(update(HostRow).where(HostRow.uri == uri).values(
                foreign_domains=sorted(names)[:MAX_FOREIGN]))

    def seen(self, uri: str, info: HostInfo) -> HostStatus:
        """The host answered. Returns its status before."""
        now = self._clock()
        with self._sessions.begin() as s:
            row = s.get(HostRow, uri)
            if row is None:
                return HostStatus.UNKNOWN
            before = HostStatus(row.status)
            row.status = HostStatus.UP.value
            row.memory_mib = info.memory_mib
            row.cpus = info.cpus
            row.arches = ",".join(sorted(a.value for a in info.arches))
            row.last_seen_at = now
            row.down_since = None
            row.error = None
            return before

    def unanswered(self, uri: str, error: str, down_after_s: float,
                   watched_since: datetime | None = None) -> bool:
        """The host did not answer. Marks it down once it has been silent for
        down_after_s (since its last answer, since it was added, or since the caller
        started watching: a broker restarted after an hour must not count that hour as
        silence). True: it went down just now."""
        now = self._clock()
        with self._sessions.begin() as s:
            row = s.get(HostRow, uri)
            if row is None:
                return False
            row.error = error[:2000]
            silent_since = max(row.last_seen_at or row.created_at,
                               watched_since or row.created_at)
            if row.status != HostStatus.DOWN.value and (
                    now - silent_since >= timedelta(seconds=down_after_s)):
                row.status = HostStatus.DOWN.value
                row.down_since = now
                return True
            return False
