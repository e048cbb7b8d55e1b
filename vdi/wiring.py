"""The composition root: everything built from Settings, once, in one place.

`Runtime` owns what runs: the database engine, the stores, the use cases the web layer
gets (`api`), the console signals writer and the pool worker, and their threads. A
process runs the web app, the worker, or both (`vdi serve --role`); adapters are chosen
here and imported only when chosen (the real libvirt and directory adapters).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from broker.access_policy import PolicyStore
from broker.activity import TunnelRegistry
from broker.api import BrokerApi, Health
from broker.api_token_store import ApiTokenStore
from broker.api_tokens import ApiTokens
from broker.assignment import Assigner
from broker.audit_trail import AuditTrail
from broker.auth.directory import Directory
from broker.auth.ldap import LdapDirectory
from broker.auth.throttle import LoginThrottle
from broker.blocking import Blocking
from broker.consoles import Consoles
from broker.dashboard import DashboardView
from broker.disconnects import DisconnectStore
from broker.helpdesk import Helpdesk
from broker.idle import IdleNotices
from broker.image_imports import ImageImports
from broker.messages import MessageStore
from broker.metering import Metering
from broker.portal import Portal
from broker.readonly_views import ReadOnlyViews, ViewStore
from broker.reclaims import ReclaimLog
from broker.security_admin import SecurityAdmin
from broker.sessions import SessionStore
from broker.signals import ConsoleSignals
from broker.signin import SignIn
from broker.system_admin import SystemAdmin
from broker.tokens import TokenStore
from pools.calls import HostCalls
from pools.hosts import Host, HostRegistry, Limits
from pools.hypervisor import Hypervisor
from pools.images import ImageStore
from pools.worker import PoolWorker
from vdi.audit import AuditLog
from vdi.catalog import Catalog
from vdi.db import make_engine, migrate, session_factory
from vdi.settings import Settings
from web.app import App, create_app

log = logging.getLogger(__name__)
# Collector thresholds for a running broker (generation 0, 1, 2; Python's are 700, 10, 10).
GC_THRESHOLDS = (10_000, 10, 10)
_gc_tuned = False


class Role(enum.StrEnum):
    """What one process runs: several web processes may share one database with one
    (or more: jobs are leased) worker processes."""

    WEB = "web"
    WORKER = "worker"
    BOTH = "both"


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    db: sessionmaker[Session]
    blocking: Blocking
    directory: Directory | None  # None in a worker process: it signs nobody in
    calls: HostCalls
    sessions: SessionStore
    tokens: TokenStore
    catalog: Catalog
    images: ImageStore
    audit: AuditLog
    tunnels: TunnelRegistry
    worker: PoolWorker
    signals: ConsoleSignals
    api: BrokerApi | None  # None in a worker process: it serves no request
    background: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self, role: Role) -> None:
        tune_garbage_collector()
        if role in (Role.WORKER, Role.BOTH):
            self.background.append(asyncio.create_task(self.worker.run()))
        if role in (Role.WEB, Role.BOTH):
            assert self.api is not None, "built for the worker role only"
            self.background.append(asyncio.create_task(self.signals.run()))
            self.background.append(asyncio.create_task(
                self.api.signin.run_console_rechecks(self.settings.input_flush_s)))

    async def stop(self) -> None:
        for task in self.background:
            task.cancel()
        for task in self.background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self.signals.flush)
        if self.api is not None:  # an import half-way records its end before we go
            await self.api.image_imports.close()
        self.calls.close()
        if isinstance(self.directory, LdapDirectory):
            self.directory.close()
        self.blocking.close()
        self.engine.dispose()


def build_runtime(settings: Settings, *, directory: Directory | None = None,
                  hosts: dict[str, Hypervisor] | None = None, role: Role = Role.BOTH
                  ) -> Runtime:
    """Migrate the schema and build what `role` runs (nothing runs until start()); a
    worker process gets no directory and no use cases: it needs no LDAP account."""
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
    blocking = Blocking()
    if directory is None and role is not Role.WORKER:
        directory = LdapDirectory(settings)
    audit = AuditLog(db)
    policy = PolicyStore(blocking=blocking, db=db, audit=audit, role_map=settings.role_map,
                         session_idle_s=settings.session_idle_s,
                         session_absolute_s=settings.session_absolute_s)
    sessions = SessionStore(db, idle_s=settings.session_idle_s,
                            absolute_s=settings.session_absolute_s,
                            limits=policy.session_limits)
    tokens = TokenStore(db, ttl_s=settings.console_token_ttl_s)
    assigner = Assigner(db, limits=limits)
    catalog = Catalog(db)
    tunnels = TunnelRegistry(settings.max_tunnels_per_user)
    notices = IdleNotices(db)
    worker = PoolWorker(db, calls, images, domain_prefix=settings.domain_prefix,
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
                        failpoint=failpoint_from_environment(os.environ))
    wake = worker.wake.set  # a worker in another process polls every worker_interval_s
    throttle = LoginThrottle(db)
    helpdesk = None if directory is None else Helpdesk(
        blocking=blocking, db=db, directory=directory, audit=audit, calls=calls,
        assigner=assigner, tunnels=tunnels, wake_worker=wake,
        directory_deadline_s=settings.ldap_timeout_s * 2 + 1)
    api = None if directory is None or helpdesk is None else BrokerApi(
        signin=SignIn(blocking=blocking, directory=directory, throttle=throttle,
                      sessions=sessions, tokens=tokens, catalog=catalog, audit=audit,
                      tunnels=tunnels, role_map=policy.role_map,
                      directory_deadline_s=settings.ldap_timeout_s * 3 + 1,
                      recheck_s=settings.session_recheck_s,
                      grant_confirm_s=settings.console_grant_confirm_s),
        portal=Portal(blocking=blocking, assigner=assigner, catalog=catalog, notices=notices,
                      audit=audit, tunnels=tunnels, wake_worker=wake,
                      messages=MessageStore(db), views=ViewStore(db),
                      disconnects=DisconnectStore(db)),
        consoles=Consoles(blocking=blocking, db=db, sessions=sessions, tokens=tokens,
                          assigner=assigner, notices=notices, audit=audit, tunnels=tunnels,
                          calls=calls, wake_worker=wake,
                          vnc_password_valid_s=settings.vnc_password_valid_s,
                          max_cut_text=settings.max_ws_frame_bytes),
        reclaims=ReclaimLog(blocking=blocking, db=db, audit=audit),
        audit_trail=AuditTrail(blocking=blocking, db=db, audit=audit),
        dashboard=DashboardView(blocking=blocking, db=db,
                                console_stale_s=settings.console_stale_s),
        policy=policy,
        metering=Metering(blocking=blocking, db=db, audit=audit,
                          timezone=settings.report_timezone,
                          console_stale_s=settings.console_stale_s),
        system_admin=SystemAdmin(blocking=blocking, db=db, wake_worker=wake),
        security=SecurityAdmin(blocking=blocking, db=db, sessions=sessions, tokens=tokens,
                               tunnels=tunnels, audit=audit),
        helpdesk=helpdesk,
        views=ReadOnlyViews(blocking=blocking, db=db, sessions=sessions, helpdesk=helpdesk,
                            audit=audit, calls=calls, tunnels=tunnels,
                            vnc_password_valid_s=settings.vnc_password_valid_s,
                            max_cut_text=settings.max_ws_frame_bytes,
                            admits=lambda source: policy.cached().admits(source)),
        health=Health(blocking, db),
        api_tokens=ApiTokens(blocking=blocking, store=ApiTokenStore(db), directory=directory,
                             throttle=throttle, audit=audit, role_map=policy.role_map,
                             max_days=settings.api_token_max_days,
                             recheck_s=settings.session_recheck_s,
                             confirm_s=settings.console_grant_confirm_s,
                             directory_deadline_s=settings.ldap_timeout_s * 3 + 1),
        image_imports=ImageImports(db, folder=settings.import_dir,
                                   library=Path(settings.state_dir) / "images",
                                   targets=import_targets(db, calls)))
    return Runtime(settings=settings, engine=engine, db=db, blocking=blocking,
                   directory=directory, calls=calls, sessions=sessions, tokens=tokens,
                   catalog=catalog, images=images, audit=audit, tunnels=tunnels,
                   worker=worker,
                   signals=ConsoleSignals(db, tunnels, sessions, flush_s=settings.input_flush_s),
                   api=api)


def import_targets(db: sessionmaker[Session], calls: HostCalls
                   ) -> Callable[[], list[tuple[Host, Hypervisor]]]:
    """Every registered host with its adapter (the hosts this process was given, before
    the worker registered them)."""
    registry = HostRegistry(db)

    def targets() -> list[tuple[Host, Hypervisor]]:
        records = registry.hosts() or [
            Host(uri=uri, name="local" if len(calls.hosts) == 1 else uri, graphics_listen="",
                 storage_pool="", storage_dir="", log_dir="") for uri in calls.hosts]
        for record in records:
            calls.ensure(record)
        return [(r, calls.hosts[r.uri]) for r in records if r.uri in calls.hosts]
    return targets


def build_app(settings: Settings, *, directory: Directory | None = None,
              hosts: dict[str, Hypervisor] | None = None, role: Role = Role.BOTH) -> App:
    """The web app; its runtime is built and started in the app's lifespan (never at
    import) and left on `app.state.runtime` for tests and tools."""

    @contextlib.asynccontextmanager
    async def running() -> AsyncIterator[BrokerApi]:
        if role is Role.WORKER:
            raise ValueError("the web app runs with the web or both roles")
        runtime = build_runtime(settings, directory=directory, hosts=hosts, role=role)
        assert runtime.api is not None
        app.state.runtime = runtime
        await runtime.start(role)
        await runtime.api.policy.current()  # the access policy before the first request
        log.info("broker ready at %s (%s)", settings.public_url, role.value)
        try:
            yield runtime.api
        finally:
            await runtime.stop()

    app = create_app(settings, running)
    return app


async def run_worker(settings: Settings) -> None:
    """The worker alone (`vdi serve --role worker`), until cancelled."""
    runtime = build_runtime(settings, role=Role.WORKER)
    await runtime.start(Role.WORKER)
    log.info("worker running")
    try:
        await asyncio.gather(*runtime.background)
    finally:
        await runtime.stop()


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
        from pools.libvirt.host import adapter_for  # imported only when the real one is used

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
