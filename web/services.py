"""The broker's shared resources, built once in the app's lifespan (never at import)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from broker.activity import Tunnel, TunnelRegistry
from broker.assignment import Assigner
from broker.directory import Directory, DirectoryUnavailable, DirectoryUser, LdapDirectory
from broker.idle import IdleNotices
from broker.sessions import SessionStore
from broker.throttle import LoginThrottle
from broker.tokens import TokenStore
from pools.calls import HostCalls
from pools.hosts import Host, Limits
from pools.hypervisor import Hypervisor
from pools.images import ImageStore
from pools.worker import PoolWorker
from vdi.audit import AuditLog
from vdi.catalog import Catalog
from vdi.db import make_engine, migrate, session_factory
from vdi.domain import DesktopState, utc_now
from vdi.models import DesktopRow
from vdi.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
# Threads for database calls: the SQLite engine's pool holds 8 + 8 connections,
# PostgreSQL's 10 + 10 (vdi.db.make_engine).
DB_THREADS = 16
# Collector thresholds for a running broker (generation 0, 1, 2; Python's are 700, 10, 10).
GC_THRESHOLDS = (10_000, 10, 10)
_gc_tuned = False


@dataclass
class Services:
    settings: Settings
    engine: Engine
    db: sessionmaker[Session]
    directory: Directory
    calls: HostCalls
    sessions: SessionStore
    tokens: TokenStore
    assigner: Assigner
    catalog: Catalog
    images: ImageStore
    audit: AuditLog
    tunnels: TunnelRegistry
    throttle: LoginThrottle
    worker: PoolWorker
    notices: IdleNotices
    clock: Callable[[], datetime] = utc_now
    ldap_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(16, thread_name_prefix="ldap"))
    # Database calls get threads of their own, as many as the engine has connections:
    # asyncio's default executor (min(32, cores + 4) threads, 6 on two cores) is shared
    # with everything else that uses asyncio.to_thread, and would leave requests
    # queueing for a thread while database connections sit idle.
    db_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(DB_THREADS, thread_name_prefix="db"))
    background: list[asyncio.Task[None]] = field(default_factory=list)

    async def authenticate(self, username: str, password: str) -> DirectoryUser:
        """Directory check off the event loop, with a deadline even if ldap3's own
        timeouts fail us. Raises InvalidCredentials or DirectoryUnavailable."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.ldap_executor, self.directory.authenticate,
                                   username, password)
        try:
            return await asyncio.wait_for(fut, self.settings.ldap_timeout_s * 3 + 1)
        except TimeoutError:
            raise DirectoryUnavailable("directory did not answer in time") from None

    async def db_call(self, fn: Callable[..., T], *args: object) -> T:
        """fn(*args) on a database thread; the caller awaits it without blocking the loop."""
        return await asyncio.get_running_loop().run_in_executor(
            self.db_executor, functools.partial(fn, *args))

    async def flush_input_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.input_flush_s)
            try:
                kicks = await asyncio.to_thread(self.flush_input)
            except Exception:  # the database hiccuped: the next round writes it all
                log.exception("writing console signals failed")
                continue
            for tunnel, because in kicks:  # tunnels are closed on the event loop
                self.tunnels.kick(tunnel, because)

    def flush_input(self) -> list[tuple[Tunnel, str]]:
        """Write the consoles' input times and their heartbeat (still open, as of now),
        and close the consoles whose desktop the idle policy took back: disconnected
        since the console opened, or no longer this clerk's. Returns the tunnels to close
        (the caller closes them on the event loop). Blocks on the database."""
        pending = self.tunnels.pending_input()
        open_here = self.tunnels.desktops_open()
        if not pending and not open_here:
            return []
        try:
            return self._write_signals(pending, open_here)
        except Exception:
            self.tunnels.unflushed(pending)  # the next round writes them (the caller logs)
            raise

    def _write_signals(self, pending: dict[str, datetime],
                       open_here: dict[str, list[Tunnel]]) -> list[tuple[Tunnel, str]]:
        now = self.clock()
        with self.db.begin() as s:
            for desktop_id, at in pending.items():  # never back in time ("still here")
                s.execute(update(DesktopRow).where(
                    DesktopRow.id == desktop_id,
                    or_(DesktopRow.last_input_at.is_(None), DesktopRow.last_input_at < at))
                          .values(last_input_at=at))
            if not open_here:
                return []
            s.execute(update(DesktopRow).where(
                DesktopRow.id.in_(list(open_here)),
                DesktopRow.state == DesktopState.ASSIGNED.value)
                .values(console_seen_at=now).execution_options(synchronize_session=False))
            rows = list(s.execute(select(DesktopRow.id, DesktopRow.state,
                                         DesktopRow.assigned_user, DesktopRow.kicked_at)
                                  .where(DesktopRow.id.in_(list(open_here)))))
        kicks = []
        for desktop_id, state, user, kicked_at in rows:
            for tunnel in open_here.get(desktop_id, ()):
                if state != DesktopState.ASSIGNED.value or user != tunnel.username:
                    kicks.append((tunnel, "reclaimed"))
                elif kicked_at is not None and kicked_at >= tunnel.opened_at:
                    kicks.append((tunnel, "idle"))
        return kicks


def build_services(settings: Settings, *, directory: Directory | None = None,
                   hosts: dict[str, Hypervisor] | None = None) -> Services:
    url = settings.effective_database_url
    migrate(url)
    engine = make_engine(url)
    db = session_factory(engine)
    factory: Callable[[Host], Hypervisor] | None = None
    if hosts is None:
        factory = libvirt_factory(settings)
        hosts = {settings.libvirt_uri: factory(Host(
            uri=settings.libvirt_uri, name="local", graphics_listen=settings.graphics_listen,
            storage_pool=settings.storage_pool, storage_dir=str(settings.storage_dir),
            log_dir=""))}
    calls = HostCalls(hosts, settings.libvirt_timeout_s, factory=factory)
    limits = Limits(memory_overcommit=settings.memory_overcommit,
                    cpu_overcommit=settings.cpu_overcommit,
                    max_provisioning=settings.max_provisioning_per_host)
    images = ImageStore(db)
    return Services(
        settings=settings, engine=engine, db=db,
        directory=directory or LdapDirectory(settings), calls=calls,
        sessions=SessionStore(db, idle_s=settings.session_idle_s,
                              absolute_s=settings.session_absolute_s),
        tokens=TokenStore(db, ttl_s=settings.console_token_ttl_s),
        assigner=Assigner(db, limits=limits), catalog=Catalog(db), images=images,
        audit=AuditLog(db),
        tunnels=TunnelRegistry(settings.max_tunnels_per_user),
        throttle=LoginThrottle(),
        notices=IdleNotices(db),
        worker=PoolWorker(db, calls, images, domain_prefix=settings.domain_prefix,
                          interval_s=settings.worker_interval_s,
                          per_host_parallel=settings.max_provisioning_per_host,
                          job_lease_s=settings.job_lease_s,
                          limits=limits,
                          host_check_interval_s=settings.host_check_interval_s,
                          down_after_s=settings.host_down_after_s,
                          reconcile_every_s=settings.reconcile_interval_s,
                          reclaim_every_s=settings.reclaim_interval_s,
                          # input reaches the database up to one flush late
                          signal_lag_s=settings.input_flush_s + 5,
                          console_stale_s=settings.console_stale_s,
                          shutdown_grace_s=settings.shutdown_grace_s,
                          failpoint=failpoint_from_environment(os.environ)),
    )


def failpoint_from_environment(environ: Mapping[str, str]) -> Callable[[str], None]:
    """The crash tests' failpoint: with VDI_FAILPOINT_KILL_AFTER_STEP=<step> the broker
    kills itself (SIGKILL) right after that job step's hypervisor work, before the
    database records it. Never set in production: then nothing happens."""
    step = environ.get("VDI_FAILPOINT_KILL_AFTER_STEP", "")

    def kill_after(done: str) -> None:
        if step and done == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return kill_after


def libvirt_factory(settings: Settings) -> Callable[[Host], Hypervisor]:
    """Adapters for libvirt hosts, from their records (the settings fill what is blank)."""

    def make(host: Host) -> Hypervisor:
        from pools.libvirt_host import adapter_for  # imported only when the real one is used

        return adapter_for(host, settings)

    return make


def tune_garbage_collector() -> None:
    """Make Python's cycle collector cheaper for a long-running broker (once per process).

    Profiling a login storm (perf on the broker) put 9 % of its CPU in the collector:
    every 700 allocations it walked young objects, and each full collection walked every
    object the process holds (modules, SQLAlchemy's compiled caches, ...). `gc.freeze()`
    after start-up moves what exists then out of the collector's sight for good, and
    larger thresholds let it run less often: the CPU per login fell by about 20 %.
    Cycles are still collected, only later; nothing here leaks.
    """
    global _gc_tuned
    if _gc_tuned:
        return
    _gc_tuned = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def start_background(services: Services, run_worker: bool = True) -> None:
    tune_garbage_collector()
    if run_worker:
        services.background.append(asyncio.create_task(services.worker.run()))
    services.background.append(asyncio.create_task(services.flush_input_forever()))


async def stop_background(services: Services) -> None:
    for task in services.background:
        task.cancel()
    for task in services.background:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await asyncio.to_thread(services.flush_input)
    services.calls.close()
    services.ldap_executor.shutdown(wait=False, cancel_futures=True)
    if isinstance(services.directory, LdapDirectory):
        services.directory.close()
    services.db_executor.shutdown(wait=True, cancel_futures=True)
    services.engine.dispose()
