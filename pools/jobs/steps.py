"""What each job step does, by name: the registry the runner follows.

A step is an async function of the runner's context and the work at hand (the job, its
desktop and pool as loaded just before, the payload so far) that returns the payload
for the following steps. Every step is idempotent: a broker that died during one runs
it again, with the payload recorded before it.

A step raises NoRoom when no host can take the desktop now (tried again later),
StepFailed when retrying cannot help (the job fails), and lets the hypervisor's
HostUnavailable and HypervisorError through (the runner retries or fails the job).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from pools.calls import HostCalls
from pools.hosts import HostRegistry, Limits, host_loads, place
from pools.hypervisor import (
    DesktopSpec,
    DomainNotFound,
    GuestNotUp,
    HostUnavailable,
    HypervisorError,
)
from pools.images import ImageNotPublished, ImageStore
from pools.jobs.queue import STEP_NAMES, Job, JobKind, JobQueue
from pools.networks import NetworkStore
from pools.seed import desktop_hostname
from vdi import desktops
from vdi.domain import ConsoleEndpoint, ConsoleKind, Desktop, Pool

log = logging.getLogger(__name__)
# kinds that keep the desktop's disk: a new host must see the same storage
KEEPS_DISK = (JobKind.RESTART, JobKind.MIGRATE)
# kinds that power a desktop down: if they fail, it is still on
POWERS_DOWN = (JobKind.SHUT_DOWN, JobKind.SUSPEND)
Payload = dict[str, Any]


class StepFailed(Exception):
    """The step cannot succeed by retrying (e.g. the image is not published)."""


class NoRoom(Exception):
    """No host can take the desktop now; the step is tried again later."""


class Replace(Exception):
    """The new desktop cannot be used (its guest never came up): the job ends failed,
    the desktop is removed with the reason, and the pool makes another."""


# a guest that does not come up is reset and given its boot timeout again this many
# times in all, then given up on
BOOT_ATTEMPTS = 2


@dataclass(frozen=True)
class StepContext:
    """What steps work with; the runner builds one."""

    sessions: sessionmaker[Session]
    calls: HostCalls
    images: ImageStore
    registry: HostRegistry
    queue: JobQueue
    limits: Limits
    create_timeout_s: float
    shutdown_grace_s: float
    # the cap on desktops being made on (or moved to) a host at once
    slot: Callable[[str], asyncio.Semaphore]
    clock: Callable[[], datetime]


@dataclass(frozen=True)
class Work:
    job: Job
    desktop: Desktop
    pool: Pool
    payload: Payload


async def destroy(ctx: StepContext, w: Work) -> Payload:
    """The desktop's domain and disk go from its host (gone already: done)."""
    await ctx.calls.run(w.desktop.host_uri, lambda h: h.destroy_desktop(w.desktop.domain_name))
    return w.payload


async def create(ctx: StepContext, w: Work) -> Payload:
    """Make and start the domain on the chosen host. A restart makes it on the new host
    but moves the desktop's record there only once it runs (until then its old home may
    still run it)."""
    desktop, pool, payload = w.desktop, w.pool, w.payload
    target = payload.get("host", desktop.host_uri)
    version = payload.get("version")
    if version is None:  # chosen once: a retried create must not switch versions
        if w.job.kind is JobKind.RESTART and desktop.image_version:
            version = desktop.image_version  # its disk was made from that one
        else:
            version = await asyncio.to_thread(ctx.images.target_version, pool, target)
        payload = {**payload, "version": version}
        await asyncio.to_thread(ctx.queue.save_payload, w.job, payload)
    try:
        version, files = await asyncio.to_thread(ctx.images.files, target, pool.image,
                                                 version or None)
    except ImageNotPublished as e:
        raise StepFailed(str(e)) from e
    network = await asyncio.to_thread(NetworkStore(ctx.sessions).for_pool, pool)
    spec = DesktopSpec(name=desktop.domain_name, desktop_id=desktop.id, pool_id=pool.id,
                       vcpus=pool.vcpus, memory_mib=pool.memory_mib, image=files,
                       # a clerk's dedicated desktop restarted: its disk or nothing
                       disk_must_exist=w.job.kind is JobKind.RESTART
                       and desktop.assigned_user is not None, console=pool.console,
                       secure_boot=pool.secure_boot, hostname=desktop_hostname(desktop.id),
                       network=pool.network, network_spec=network, user_data=pool.user_data)
    async with ctx.slot(target):
        endpoint = await ctx.calls.run(
            target, lambda h: h.create_desktop(spec),
            timeout_s=max(ctx.calls.timeout_s, ctx.create_timeout_s))
    return {**payload, "version": version, "console_kind": endpoint.kind.value,
            "console_host": endpoint.host, "console_port": endpoint.port}


def _endpoint(payload: Payload) -> ConsoleEndpoint | None:
    """The console endpoint the create step recorded in the job's payload."""
    host, port = payload.get("console_host"), payload.get("console_port")
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    return ConsoleEndpoint(ConsoleKind(payload.get("console_kind", "vnc")), host, port)


async def boot(ctx: StepContext, w: Work) -> Payload:
    """Wait until the guest is up (its agent answers, or its image's boot delay has
    passed): until then the desktop is not offered. A guest not up within the pool's
    boot timeout is reset and waited for again, up to BOOT_ATTEMPTS in all, then
    replaced (Replace); a clerk's restarted desktop is never reset: it fails with the
    reason for the helpdesk."""
    desktop, pool, payload = w.desktop, w.pool, w.payload
    host = payload.get("host", desktop.host_uri)
    version = int(payload.get("version") or desktop.image_version or 0)
    traits = await asyncio.to_thread(ctx.images.traits, pool.image, version)
    if traits is None:
        raise StepFailed(f"image {pool.image} v{version} has no record of how it boots "
                         "(import it again)")
    name, timeout = desktop.domain_name, float(pool.boot_timeout_s)
    attempts = int(payload.get("boot_attempts", 0))
    while True:
        try:
            await ctx.calls.run(host, lambda h: h.wait_until_up(name, traits, timeout),
                                timeout_s=timeout + ctx.calls.timeout_s, wait=True)
            break
        except GuestNotUp as e:
            attempts += 1
            if w.job.kind is JobKind.RESTART:
                # a clerk's own desktop (a guest installing updates, say) is never reset
                # under them: reported, and left running
                raise StepFailed(str(e)) from e
            if attempts >= BOOT_ATTEMPTS:
                raise Replace(f"{e} (tried {attempts} times)") from e
            payload = {**payload, "boot_attempts": attempts}
            await asyncio.to_thread(ctx.queue.save_payload, w.job, payload)
            await ctx.calls.run(host, lambda h: h.reset_desktop(name))
    if traits.agent:
        await _after_up(ctx, w, host, name)
    return {**payload, "boot_attempts": attempts + 1}


async def _after_up(ctx: StepContext, w: Work, host: str, name: str) -> None:
    """A resumed guest's clock stood still while it was saved: set it. The guest's
    addresses are noted for admins and helpdesk. Neither holds the desktop back."""
    try:
        if w.job.kind is JobKind.RESTART:
            await ctx.calls.run(host, lambda h: h.sync_guest_clock(name))
        addresses = await ctx.calls.run(host, lambda h: h.guest_addresses(name))
    except HypervisorError as e:
        log.info("desktop %s: up, but its agent did not tell its addresses: %s", name, e)
        return

    def write() -> None:
        with ctx.sessions.begin() as s:
            desktops.note_addresses(s, w.desktop.id, addresses)
    await asyncio.to_thread(write)


async def ready(ctx: StepContext, w: Work) -> Payload:
    """The desktop is a spare: ready, with the console endpoint the create step got."""
    def write() -> None:
        with ctx.sessions.begin() as s:
            # refused when done already (a rerun after a crash): nothing to do then
            desktops.mark_ready(s, w.job.desktop_id, console=_endpoint(w.payload),
                                image_version=w.payload.get("version", 0), now=ctx.clock())
    await asyncio.to_thread(write)
    return w.payload


async def choose_host(ctx: StepContext, w: Work) -> Payload:
    """Where the desktop goes (`place`); chosen before a crash: kept."""
    if "host" in w.payload:
        return w.payload
    host = await asyncio.to_thread(_place, ctx, w)
    return {**w.payload, "host": host, "from_host": w.desktop.host_uri}


def _place(ctx: StepContext, w: Work) -> str:
    """Its own host if that still takes desktops (a revert, a restart), else the best
    other one; for a kept disk, one sharing the storage. A desktop remade from the image
    is moved to the chosen host now; one that keeps its disk when it runs there."""
    kind, desktop, pool = w.job.kind, w.desktop, w.pool
    hosts = ctx.registry.hosts()
    current = next((h for h in hosts if h.uri == desktop.host_uri), None)
    stays = kind in (JobKind.REVERT, JobKind.RESTART) and current is not None and (
        current.accepts_desktops and (not pool.hosts or current.uri in pool.hosts)) and (
        kind is JobKind.RESTART
        or current.uri in ctx.images.hosts_ready_for(pool, [current.uri]))
    if stays:
        return desktop.host_uri
    if kind in KEEPS_DISK:
        if current is None or not current.shared_storage:
            raise NoRoom(f"desktop {desktop.id} keeps its disk on {desktop.host_uri}, "
                         "which shares it with no other host: it waits for that host")
        hosts = [h for h in hosts if h.shared_storage]
    else:  # a new clone needs the image there
        holding = ctx.images.hosts_ready_for(pool, [h.uri for h in hosts])
        hosts = [h for h in hosts if h.uri in holding]
    with ctx.sessions.begin() as s:
        chosen = place(pool, host_loads(s, hosts).values(), ctx.limits,
                       avoid=desktop.host_uri)
        if chosen is None:
            raise NoRoom(f"no host has room for desktop {desktop.id} now")
        if kind not in KEEPS_DISK and not desktops.move_host(
                s, desktop.id, from_host=desktop.host_uri, to_host=chosen.host.uri,
                now=ctx.clock()):
            raise StepFailed(f"desktop {desktop.id} changed while a host was chosen for it")
        return chosen.host.uri


async def release(ctx: StepContext, w: Work) -> Payload:
    """Off the old host if it answers; if not, the reconciler removes it when the host
    is back."""
    try:
        await ctx.calls.run(w.desktop.host_uri,
                            lambda h: h.destroy_desktop(w.desktop.domain_name))
    except HostUnavailable as e:
        return {**w.payload, "released": False, "release_error": str(e)[:500]}
    return w.payload


async def wipe(ctx: StepContext, w: Work) -> Payload:
    """A leftover disk of that name (shared storage) on the new host must not be reused."""
    await ctx.calls.run(w.desktop.host_uri, lambda h: h.destroy_desktop(w.desktop.domain_name))
    return w.payload


async def migrate(ctx: StepContext, w: Work) -> Payload:
    """Live-migrate the running domain to the chosen host (an incoming desktop counts
    against that host's slots)."""
    name, source, dest = w.desktop.domain_name, w.payload["from_host"], w.payload["host"]
    if source == dest:
        return w.payload
    async with ctx.slot(dest):
        target = await asyncio.to_thread(ctx.registry.host, dest)
        if target is None:
            raise StepFailed(f"host {dest} is not registered")
        try:
            await ctx.calls.run(source, lambda h: h.migrate_desktop(
                name, dest, target.graphics_listen), timeout_s=max(ctx.calls.timeout_s, 300))
        except DomainNotFound:
            # gone from the source: done already (a broker died before recording it)?
            await ctx.calls.run(dest, lambda h: h.console_endpoint(name))
    return w.payload


async def resume(ctx: StepContext, w: Work) -> Payload:
    """The desktop runs on its (new) host: record there and its console endpoint."""
    host = w.payload.get("host", w.desktop.host_uri)
    endpoint = await ctx.calls.run(host, lambda h: h.console_endpoint(w.desktop.domain_name))

    def write() -> None:
        with ctx.sessions.begin() as s:
            if not desktops.mark_running(s, w.desktop.id, host_uri=host, console=endpoint,
                                         now=ctx.clock()):
                raise StepFailed(f"desktop {w.desktop.id} is no longer ready or in use")
    await asyncio.to_thread(write)
    return w.payload


async def power_off(ctx: StepContext, w: Work) -> Payload:
    """Shut the guest down (forced off after the grace); gone: off already."""
    grace, name = ctx.shutdown_grace_s, w.desktop.domain_name
    with contextlib.suppress(DomainNotFound):
        await ctx.calls.run(w.desktop.host_uri, lambda h: h.shut_down_desktop(name, grace),
                            timeout_s=max(ctx.calls.timeout_s, grace + 30))
    return w.payload


async def suspend(ctx: StepContext, w: Work) -> Payload:
    """Save the guest's memory to disk; gone: nothing to save."""
    with contextlib.suppress(DomainNotFound):
        await ctx.calls.run(w.desktop.host_uri,
                            lambda h: h.suspend_desktop(w.desktop.domain_name),
                            timeout_s=max(ctx.calls.timeout_s, 300))
    return w.payload


async def forget(ctx: StepContext, w: Work) -> Payload:
    """The removed desktop's row stays, as deleted."""
    def write() -> None:
        with ctx.sessions.begin() as s:
            desktops.mark_deleted(s, w.job.desktop_id, ctx.clock())  # refused: done already
    await asyncio.to_thread(write)
    return w.payload


Step = Callable[[StepContext, Work], Awaitable[Payload]]
BY_NAME: dict[str, Step] = {
    "destroy": destroy, "create": create, "boot": boot, "ready": ready, "place": choose_host,
    "release": release, "wipe": wipe, "migrate": migrate, "resume": resume,
    "power_off": power_off, "suspend": suspend, "forget": forget,
}
# each kind's steps in order, with their stored names (a name without a function here
# fails at import, not in the middle of a job)
REGISTRY: dict[JobKind, tuple[tuple[str, Step], ...]] = {
    kind: tuple((name, BY_NAME[name]) for name in names)
    for kind, names in STEP_NAMES.items()}
