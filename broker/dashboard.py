"""The system administrator's dashboard: each pool's desktops by what they are doing, each
host's load and state, and what needs attention (failed desktops, hosts down or in
maintenance). Read-only, one database trip; the console polls it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.blocking import Blocking
from pools.hosts import HostRegistry, HostStatus, host_loads
from vdi.catalog import Catalog
from vdi.domain import DesktopState, utc_now
from vdi.models import DesktopRow

# the buckets a pool's desktops fall in, in the order the console shows them
BUCKETS = ("ready", "booting", "in_use", "disconnected", "reclaiming", "failed")


@dataclass(frozen=True)
class PoolLine:
    id: str
    name: str
    office: str | None
    min_ready: int
    max_size: int
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class HostLine:
    name: str
    uri: str
    status: str
    maintenance: bool
    memory_mib: int
    memory_used_mib: int
    cpus: int
    vcpus_used: int
    arches: tuple[str, ...]
    error: str | None


@dataclass(frozen=True)
class Alert:
    kind: str  # desktop_failed | host_down | host_maintenance | foreign_domains
    target: str
    detail: str


@dataclass(frozen=True)
class Dashboard:
    at: datetime
    pools: tuple[PoolLine, ...]
    hosts: tuple[HostLine, ...]
    alerts: tuple[Alert, ...]


def bucket(state: str, console_seen_at: datetime | None, now: datetime,
           stale: timedelta) -> str | None:
    """Where a desktop counts: in use while a console reported it lately, else
    disconnected; None for a deleted one."""
    if state == DesktopState.ASSIGNED.value:
        live = console_seen_at is not None and now - console_seen_at <= stale
        return "in_use" if live else "disconnected"
    return {DesktopState.READY.value: "ready", DesktopState.PROVISIONING.value: "booting",
            DesktopState.RECLAIMING.value: "reclaiming", DesktopState.ERROR.value: "failed",
            DesktopState.MAINTENANCE.value: "reclaiming"}.get(state)


class DashboardView:
    def __init__(self, *, blocking: Blocking, db: sessionmaker[Session],
                 console_stale_s: float, clock: Callable[[], datetime] = utc_now) -> None:
        self._blocking = blocking
        self._db = db
        self._stale = timedelta(seconds=console_stale_s)
        self._catalog = Catalog(db)
        self._hosts = HostRegistry(db, clock)
        self._clock = clock

    async def read(self) -> Dashboard:
        return await self._blocking.db(self._read)

    def _read(self) -> Dashboard:
        now = self._clock()
        pools = self._catalog.pools()
        hosts = self._hosts.hosts()
        with self._db() as s:
            rows = s.execute(select(DesktopRow.id, DesktopRow.pool_id, DesktopRow.state,
                                    DesktopRow.console_seen_at, DesktopRow.error)
                             .where(DesktopRow.state != DesktopState.DELETED.value)).all()
            loads = host_loads(s, hosts)
        counts: dict[str, dict[str, int]] = {p.id: dict.fromkeys(BUCKETS, 0) for p in pools}
        alerts: list[Alert] = []
        for desktop_id, pool_id, state, seen, error in rows:
            b = bucket(state, seen, now, self._stale)
            if b is not None and pool_id in counts:
                counts[pool_id][b] += 1
            if b == "failed":
                alerts.append(Alert("desktop_failed", desktop_id,
                                    (error or "").splitlines()[0][:200] if error else ""))
        for h in hosts:
            if h.status is HostStatus.DOWN:
                alerts.append(Alert("host_down", h.name, h.error or ""))
            elif h.maintenance:
                alerts.append(Alert("host_maintenance", h.name, ""))
            if h.foreign_domains:
                shown = ", ".join(h.foreign_domains[:5])
                more = len(h.foreign_domains) - 5
                alerts.append(Alert("foreign_domains", h.name,
                                    shown + (f" (+{more})" if more > 0 else "")))
        return Dashboard(
            at=now,
            pools=tuple(PoolLine(p.id, p.display_name, p.office, p.min_ready, p.max_size,
                                 counts[p.id]) for p in pools),
            hosts=tuple(HostLine(h.name, h.uri, h.status.value, h.maintenance, h.memory_mib,
                                 loads[h.uri].memory_mib, h.cpus, loads[h.uri].vcpus,
                                 tuple(sorted(a.value for a in h.arches)), h.error)
                        for h in hosts),
            alerts=tuple(alerts))
