"""The pool worker: keeps each pool's spare desktops booted, up to max_size.

Hypervisor work is persisted first as a desktop row in state `provisioning`; creating
the domain is idempotent, so a broker killed half-way resumes the same desktop on its
next tick instead of leaving an orphan or making a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from pools.calls import HostCalls
from pools.hypervisor import DesktopSpec, GraphicsEndpoint, HostUnavailable, HypervisorError
from pools.images import ImageNotPublished, ImageStore
from vdi.catalog import Catalog
from vdi.domain import DesktopState, Pool, utc_now
from vdi.models import DesktopRow

log = logging.getLogger(__name__)
COUNTED = (DesktopState.PROVISIONING, DesktopState.READY, DesktopState.ASSIGNED,
           DesktopState.RECLAIMING, DesktopState.ERROR, DesktopState.MAINTENANCE)


@dataclass(frozen=True)
class SparePlan:
    """How many desktops to add to a pool now (pure, for the worker and its tests)."""

    add: int

    @staticmethod
    def for_pool(pool: Pool, ready: int, provisioning: int, live: int) -> SparePlan:
        want = pool.min_ready - ready - provisioning
        room = pool.max_size - live
        return SparePlan(add=max(0, min(want, room)))


class PoolWorker:
    def __init__(self, sessions: sessionmaker[Session], calls: HostCalls, images: ImageStore,
                 *, host_uri: str, domain_prefix: str, interval_s: float,
                 per_host_parallel: int = 2, clock: Callable[[], datetime] = utc_now) -> None:
        self._sessions = sessions
        self._catalog = Catalog(sessions)
        self._calls = calls
        self._images = images
        self._host_uri = host_uri
        self._prefix = domain_prefix
        self._interval = interval_s
        self._clock = clock
        self._slots = asyncio.Semaphore(per_host_parallel)
        self._in_flight: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()

    async def run(self) -> None:
        """Tick until cancelled. A failing tick is logged and retried, never fatal."""
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the worker alive; the next tick retries
                log.exception("pool worker tick failed")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self._interval)

    async def tick(self) -> None:
        pools = await asyncio.to_thread(self._catalog.pools)
        for pool in pools:
            new_ids = await asyncio.to_thread(self._plan_and_insert, pool)
            pending = await asyncio.to_thread(self._provisioning_ids, pool.id)
            for desktop_id in pending:
                if desktop_id not in self._in_flight:
                    self._in_flight.add(desktop_id)
                    task = asyncio.create_task(self._provision(pool, desktop_id))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            if new_ids:
                log.info("pool %s: provisioning %d new desktop(s)", pool.id, len(new_ids))

    async def drain(self) -> None:
        """Wait for the provisioning tasks started so far (tests and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _plan_and_insert(self, pool: Pool) -> list[str]:
        # read before the write transaction: SQLite allows one writer, even in this thread
        version = self._images.latest_version(self._host_uri, pool.image)
        with self._sessions.begin() as s:
            counts: dict[str, int] = {
                state: n for state, n in s.execute(
                    select(DesktopRow.state, func.count()).where(DesktopRow.pool_id == pool.id)
                    .group_by(DesktopRow.state))}
            ready = counts.get(DesktopState.READY.value, 0)
            prov = counts.get(DesktopState.PROVISIONING.value, 0)
            live = sum(counts.get(st.value, 0) for st in COUNTED)
            plan = SparePlan.for_pool(pool, ready, prov, live)
            if not plan.add:
                return []
            now = self._clock()
            ids = []
            for _ in range(plan.add):
                suffix = secrets.token_hex(4)
                desktop_id = f"{pool.id}-{suffix}"
                s.add(DesktopRow(id=desktop_id, pool_id=pool.id,
                                 state=DesktopState.PROVISIONING.value,
                                 host_uri=self._host_uri,
                                 domain_name=f"{self._prefix}{desktop_id}",
                                 image_version=version, created_at=now, updated_at=now))
                ids.append(desktop_id)
            return ids

    def _provisioning_ids(self, pool_id: str) -> list[str]:
        with self._sessions() as s:
            return list(s.scalars(select(DesktopRow.id).where(
                DesktopRow.pool_id == pool_id,
                DesktopRow.state == DesktopState.PROVISIONING.value)))

    async def _provision(self, pool: Pool, desktop_id: str) -> None:
        try:
            async with self._slots:
                row = await asyncio.to_thread(self._load, desktop_id)
                if row is None or row.state != DesktopState.PROVISIONING.value:
                    return
                try:
                    version, files = await asyncio.to_thread(
                        self._images.files, row.host_uri, pool.image, row.image_version or None)
                except ImageNotPublished as e:
                    await asyncio.to_thread(self._fail, desktop_id, str(e))
                    return
                spec = DesktopSpec(name=row.domain_name, desktop_id=desktop_id, pool_id=pool.id,
                                   vcpus=pool.vcpus, memory_mib=pool.memory_mib, image=files)
                try:
                    endpoint = await self._calls.run(row.host_uri,
                                                     lambda h: h.create_desktop(spec),
                                                     timeout_s=max(self._calls.timeout_s, 60))
                except HostUnavailable as e:
                    log.warning("desktop %s: host unavailable, will retry: %s", desktop_id, e)
                    await asyncio.to_thread(self._note, desktop_id, str(e))
                    return
                except HypervisorError as e:
                    log.error("desktop %s: provisioning failed: %s", desktop_id, e)
                    await asyncio.to_thread(self._fail, desktop_id, str(e))
                    return
                await asyncio.to_thread(self._mark_ready, desktop_id, endpoint, version)
                log.info("desktop %s ready on %s:%d", desktop_id, endpoint.host, endpoint.port)
        finally:
            self._in_flight.discard(desktop_id)

    def _load(self, desktop_id: str) -> DesktopRow | None:
        with self._sessions() as s:
            return s.get(DesktopRow, desktop_id)

    def _mark_ready(self, desktop_id: str, endpoint: GraphicsEndpoint, version: int) -> None:
        with self._sessions.begin() as s:
            s.execute(update(DesktopRow).where(
                DesktopRow.id == desktop_id,
                DesktopRow.state == DesktopState.PROVISIONING.value).values(
                state=DesktopState.READY.value, vnc_host=endpoint.host, vnc_port=endpoint.port,
                image_version=version, error=None, updated_at=self._clock()))

    def _fail(self, desktop_id: str, message: str) -> None:
        with self._sessions.begin() as s:
            s.execute(update(DesktopRow).where(
                DesktopRow.id == desktop_id,
                DesktopRow.state == DesktopState.PROVISIONING.value).values(
                state=DesktopState.ERROR.value, error=message[:2000], updated_at=self._clock()))

    def _note(self, desktop_id: str, message: str) -> None:
        with self._sessions.begin() as s:
            s.execute(update(DesktopRow).where(DesktopRow.id == desktop_id).values(
                error=message[:2000], updated_at=self._clock()))
