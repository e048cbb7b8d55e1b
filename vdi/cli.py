"""The `vdi` command: run the broker and manage its records.

This is the composition root: it alone reaches into `web` and `pools.libvirt_host`
(imported inside the commands that need them), so that `vdi` itself stays free of
starlette and libvirt.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import logging
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from pools.hosts import Host, HostError, HostRegistry
from vdi.audit import AuditLog
from vdi.catalog import Catalog, CatalogError
from vdi.db import make_engine, migrate, rows_changed, session_factory
from vdi.domain import DesktopState, Pool, PoolKind, utc_now
from vdi.models import DesktopRow, PoolRow
from vdi.settings import Settings, SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vdi", description="VDI connection broker")
    parser.add_argument("--config", help="TOML settings file (default: $VDI_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="create or upgrade the database schema")
    serve = sub.add_parser("serve", help="run the broker (HTTP + websocket console)")
    serve.add_argument("--no-worker", action="store_true", help="do not run the pool worker")
    pub = sub.add_parser("image-publish", help="publish a built guest image as a new version")
    pub.add_argument("image_id")
    pub.add_argument("source_dir", type=Path)
    pub.add_argument("--pool", action="append", default=[],
                     help="try the new version on this pool only (repeat); the pools that "
                          "follow the image keep the released version")
    pub.add_argument("--no-release", action="store_true",
                     help="publish without rolling it out")
    rel = sub.add_parser("image-release",
                         help="roll an image version out to the pools that follow the image")
    rel.add_argument("image_id")
    rel.add_argument("version", type=int)
    rb = sub.add_parser("image-rollback", help="release the version before the released one")
    rb.add_argument("image_id")
    sub.add_parser("images", help="list image versions and which one is released")
    ps = sub.add_parser("pool-set", help="create or update a desktop pool (an update changes "
                                         "only the options given)")
    ps.add_argument("pool_id")
    ps.add_argument("--name", help="display name shown to clerks (needed for a new pool)")
    ps.add_argument("--image", help="golden image id (needed for a new pool)")
    ps.add_argument("--kind", choices=[k.value for k in PoolKind],
                    help="floating (default for a new pool) or dedicated")
    ps.add_argument("--vcpus", type=int)
    ps.add_argument("--memory-mib", type=int)
    ps.add_argument("--min-ready", type=int)
    ps.add_argument("--max-size", type=int)
    ps.add_argument("--group", action="append",
                    help="entitled group DN (repeat; replaces the list)")
    ps.add_argument("--image-version",
                    help="pin the pool to this image version, or 'released' to follow the "
                         "image's released version (the default)")
    ps.add_argument("--host", action="append",
                    help="host URI the pool may use (repeat; replaces the list; 'any': all)")
    pp = sub.add_parser("pool-policy", help="set a pool's idle policy per shift and its spare "
                                            "levels from a TOML or JSON file, or show them")
    pp.add_argument("pool_id")
    pp.add_argument("file", nargs="?", type=Path,
                    help="the policy (see docs/idle-policy.md); without it: show the "
                         "pool's policy as stored, defaults filled in")
    rc = sub.add_parser("reclaims", help="desktops the idle policy took back, newest first")
    rc.add_argument("--pool")
    rc.add_argument("--hours", type=float, default=24.0)
    ha = sub.add_parser("host-add", help="register a libvirt host, or change how it is reached")
    ha.add_argument("uri", help="e.g. qemu+tcp://10.0.0.12/system")
    ha.add_argument("--name", required=True)
    ha.add_argument("--graphics-listen", required=True,
                    help="the host's address its desktops' consoles listen on")
    ha.add_argument("--storage-pool", default="", help="default: the storage_pool setting")
    ha.add_argument("--storage-dir", default="", help="default: the storage_dir setting")
    ha.add_argument("--log-dir", default="",
                    help="where the host writes serial logs (shared with the other hosts "
                         "when the storage is)")
    ha.add_argument("--shared-storage", action="store_true",
                    help="the storage dir is shared with the other shared hosts (live "
                         "migration; dedicated desktops restarted elsewhere on failure)")
    sub.add_parser("hosts", help="list hosts")
    hm = sub.add_parser("host-maintenance", help="stop (on) or resume (off) placing on a host")
    hm.add_argument("host")
    hm.add_argument("state", choices=["on", "off"])
    hd = sub.add_parser("host-drain", help="maintenance on, and move the host's desktops off "
                                           "(dedicated: live migration)")
    hd.add_argument("host")
    dr = sub.add_parser("desktop-remove",
                        help="delete a desktop: its domain and disk (an admin's decision)")
    dr.add_argument("desktop_id")
    dr.add_argument("--yes", action="store_true",
                    help="also when a user holds it (a dedicated desktop's disk is lost)")
    sub.add_parser("pools", help="list pools")
    sub.add_parser("desktops", help="list desktops")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        settings = load_settings(args.config)
    except SettingsError as e:
        print(f"vdi: {e}", file=sys.stderr)
        return 2
    try:
        return _run(args, settings)
    except CatalogError as e:
        print(f"vdi: {e}", file=sys.stderr)
        return 2


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for the broker; `vdi serve` and bench/tunnel.py both use them.

    The websocket implementation is named rather than left to "auto" (which would pick
    wsproto if websockets went missing): on the console tunnel, websockets' sans-I/O core
    needed half the CPU per GB of wsproto browser->server and 10-15 % less than uvicorn's
    older websockets protocol (measured with bench/tunnel.py)."""
    return {"host": settings.listen_host, "port": settings.listen_port,
            "ws": "websockets-sansio", "ws_max_size": settings.max_ws_frame_bytes,
            "ws_per_message_deflate": False, "proxy_headers": False}


def _run(args: argparse.Namespace, settings: Settings) -> int:
    url = settings.effective_database_url
    if args.command == "serve":
        import uvicorn

        from web.app import create_app

        app = create_app(settings, run_worker=not args.no_worker)
        uvicorn.run(app, **server_options(settings), log_level="info")
        return 0
    migrate(url)
    db = session_factory(make_engine(url))
    catalog = Catalog(db)
    if args.command == "migrate":
        print(f"database schema is current ({url.split('://')[0]})")
    elif args.command == "image-publish":
        from pools.hypervisor import HypervisorError
        from pools.images import ImageStore
        from pools.libvirt_host import adapter_for

        targets = HostRegistry(db).hosts() or [_default_host(settings)]
        store = ImageStore(db)
        trial = [catalog.pool(pool_id) for pool_id in args.pool]
        missing = [pool_id for pool_id, p in zip(args.pool, trial, strict=True) if p is None]
        if missing:
            print(f"vdi: no such pool: {', '.join(missing)}", file=sys.stderr)
            return 2
        from pools.hypervisor import image_digest
        from pools.images import ReleaseError

        try:  # one version number for this build on every host
            version = store.version_for(args.image_id, image_digest(args.source_dir))
        except FileNotFoundError as e:
            print(f"vdi: {e} (build the image first)", file=sys.stderr)
            return 1
        for record in targets:
            print(f"publishing {args.image_id} v{version} on {record.name} ({record.uri})...",
                  flush=True)
            try:
                version, files = store.publish(adapter_for(record, settings), args.image_id,
                                               args.source_dir, version)
            except (HypervisorError, FileNotFoundError, ReleaseError) as e:
                print(f"vdi: {record.name}: {e}", file=sys.stderr)
                return 1
            print(f"image {args.image_id} v{version} published on {record.name}: "
                  f"{files.disk_path}")
        for p in trial:
            assert p is not None
            catalog.save_pool(dataclasses.replace(p, image_version=version))
            print(f"pool {p.id} now runs {args.image_id} v{version} (a trial)")
            _audit(db, "pool-pin-image", p.id, f"{args.image_id} v{version}")
        if not trial and not args.no_release and store.released_version(args.image_id) == version:
            print(f"image {args.image_id} v{version} is the released version already")
        elif not trial and not args.no_release:
            before = store.release(args.image_id, version, by=_cli_actor())
            _audit(db, "image-release", args.image_id, f"v{before} -> v{version}")
            print(f"image {args.image_id} v{version} released"
                  + (f" (was v{before})" if before and before != version else ""))
    elif args.command == "image-release":
        from pools.images import ImageStore, ReleaseError

        try:
            before = ImageStore(db).release(args.image_id, args.version, by=_cli_actor())
        except ReleaseError as e:
            print(f"vdi: {e}", file=sys.stderr)
            return 2
        _audit(db, "image-release", args.image_id, f"v{before} -> v{args.version}")
        print(f"image {args.image_id} v{args.version} released (was v{before}); spares are "
              "replaced now, desktops in use when their clerk logs off")
    elif args.command == "image-rollback":
        from pools.images import ImageStore, ReleaseError

        try:
            was, now = ImageStore(db).rollback(args.image_id, by=_cli_actor())
        except ReleaseError as e:
            print(f"vdi: {e}", file=sys.stderr)
            return 2
        _audit(db, "image-rollback", args.image_id, f"v{was} -> v{now}")
        print(f"image {args.image_id} rolled back from v{was} to v{now}")
    elif args.command == "images":
        from pools.images import ImageStore

        store = ImageStore(db)
        for image_id, version, host_uri, published in store.listing():
            mark = "released" if store.released_version(image_id) == version else ""
            print(f"{image_id}\tv{version}\t{host_uri}\t{published:%Y-%m-%d %H:%M}\t{mark}")
    elif args.command == "pool-set":
        return _pool_set(args, catalog)
    elif args.command == "pool-policy":
        return _pool_policy(args, db, catalog)
    elif args.command == "reclaims":
        if not 0 < args.hours <= 90 * 24:  # also NaN and infinity
            print("vdi: --hours: a number of hours, more than 0 and at most 2160",
                  file=sys.stderr)
            return 2
        _print_reclaims(db, args.pool, args.hours)
    elif args.command == "host-add":
        registry = HostRegistry(db)
        try:
            registry.add(Host(uri=args.uri, name=args.name, graphics_listen=args.graphics_listen,
                              storage_pool=args.storage_pool, storage_dir=args.storage_dir,
                              log_dir=args.log_dir, shared_storage=args.shared_storage))
        except HostError as e:
            print(f"vdi: {e}", file=sys.stderr)
            return 2
        _audit(db, "host-add", args.uri, f"name {args.name}")
        print(f"host {args.name} saved; the broker asks it for its capacity within seconds "
              "(publish the images on it with image-publish)")
    elif args.command == "hosts":
        for h in HostRegistry(db).hosts():
            flags = ",".join(f for f, on in (("maintenance", h.maintenance),
                                             ("shared", h.shared_storage)) if on) or "-"
            print(f"{h.name}\t{h.status.value}\t{flags}\t{h.memory_mib} MiB\t{h.cpus} CPUs\t"
                  f"{h.uri}\t{h.error or ''}")
    elif args.command in ("host-maintenance", "host-drain"):
        from pools.failover import evacuate

        registry = HostRegistry(db)
        on = args.command == "host-drain" or args.state == "on"
        try:
            host = registry.set_maintenance(args.host, on)
        except HostError as e:
            print(f"vdi: {e}", file=sys.stderr)
            return 2
        _audit(db, args.command, host.uri, f"maintenance {'on' if on else 'off'}")
        print(f"host {host.name}: maintenance {'on' if on else 'off'}")
        if args.command == "host-drain":
            with db.begin() as s:
                moves = evacuate(s, host, utc_now(), live=True)
            print(f"host {host.name}: {moves.migrated} dedicated desktop(s) to live-migrate, "
                  f"{moves.relocated} spare(s) to remake elsewhere, {moves.waiting} waiting "
                  "(no shared storage); desktops in use of floating pools move when their "
                  "clerk logs off. The broker's worker does the moves.")
    elif args.command == "desktop-remove":
        from pools.jobs.queue import JobKind, active_job_desktops, enqueue

        with db.begin() as s:
            row = s.get(DesktopRow, args.desktop_id)
            if row is None or row.state == DesktopState.DELETED.value:
                print(f"vdi: no such desktop: {args.desktop_id}", file=sys.stderr)
                return 2
            if row.assigned_user and not args.yes:
                print(f"vdi: desktop {row.id} belongs to {row.assigned_user}; its disk and "
                      "everything on it would be deleted. Add --yes to do it.", file=sys.stderr)
                return 2
            if row.id in active_job_desktops(s):
                print(f"vdi: desktop {row.id} is being worked on; try again in a minute",
                      file=sys.stderr)
                return 2
            owner, asked_at = row.assigned_user, utc_now()
            # compare-and-set: a clerk who got this desktop since it was read must not
            # lose it without the --yes that names them
            if not rows_changed(s.execute(update(DesktopRow).where(
                    DesktopRow.id == row.id, DesktopRow.state == row.state,
                    DesktopRow.assigned_user.is_(None) if owner is None
                    else DesktopRow.assigned_user == owner).values(
                    state=DesktopState.RECLAIMING.value, assigned_user=None,
                            updated_at=asked_at)
                    .execution_options(synchronize_session=False))):
                print(f"vdi: desktop {row.id} changed meanwhile (a clerk may have just got "
                      "it); look again with `vdi desktops` and repeat", file=sys.stderr)
                return 2
            enqueue(s, JobKind.REMOVE, row.id, asked_at)
        _audit(db, "desktop-remove", args.desktop_id, f"held by {owner or 'nobody'}")
        print(f"desktop {args.desktop_id}: removal queued; the broker deletes its domain and "
              "disk (the pool makes a new spare if it needs one)")
    elif args.command == "pools":
        from pools.worker import pool_spare_level

        for p in catalog.pools():
            runs = f"v{p.image_version}" if p.image_version else "released"
            with db() as s:
                level, _ = pool_spare_level(s, p, utc_now())
            print(f"{p.id}\t{p.kind.value}\t{p.image} ({runs})\tmin_ready={p.min_ready}\t"
                  f"max_size={p.max_size}\t{p.display_name}\tspares now: "
                  f"{min(level.min_ready, p.max_size)} ({level.reason})")
    elif args.command == "desktops":
        for d in catalog.desktops():
            print(f"{d.id}\t{d.state.value}\t{d.assigned_user or '-'}\t{d.domain_name}\t"
                  f"v{d.image_version}\t{d.vnc_host}:{d.vnc_port}\t{d.host_uri}\t"
                  f"{(d.error or '').splitlines()[0] if d.error else ''}")
    return 0


def _pool_set(args: argparse.Namespace, catalog: Catalog) -> int:
    """Create a pool, or change only what the options name: leaving out --kind must
    never turn a dedicated pool floating (its clerks' disks would be reverted)."""
    before = catalog.pool(args.pool_id)
    if before is None and (not args.name or not args.image):
        print(f"vdi: pool {args.pool_id} is new: --name and --image are needed",
              file=sys.stderr)
        return 2
    base = before or Pool(id=args.pool_id, display_name="", kind=PoolKind.FLOATING, image="",
                          vcpus=1, memory_mib=256, min_ready=1, max_size=4,
                          entitled_groups=())
    changes: dict[str, Any] = {k: v for k, v in {
        "display_name": args.name, "image": args.image, "vcpus": args.vcpus,
        "memory_mib": args.memory_mib, "min_ready": args.min_ready,
        "max_size": args.max_size}.items() if v is not None}
    if args.kind is not None:
        changes["kind"] = PoolKind(args.kind)
    if args.group is not None:
        changes["entitled_groups"] = tuple(args.group)
    if args.host is not None:
        changes["hosts"] = () if args.host == ["any"] else tuple(args.host)
    if args.image_version is not None:
        if args.image_version == "released":
            changes["image_version"] = None
        elif args.image_version.isdigit() and int(args.image_version) > 0:
            changes["image_version"] = int(args.image_version)
        else:
            print("vdi: --image-version: a version number or 'released'", file=sys.stderr)
            return 2
    pool = dataclasses.replace(base, **changes)
    if before is not None and pool.kind != before.kind:
        held = [d for d in catalog.desktops(pool.id) if d.state is not DesktopState.DELETED]
        if held:
            print(f"vdi: pool {pool.id} has {len(held)} desktop(s); it cannot change from "
                  f"{before.kind.value} to {pool.kind.value} (remove them first with "
                  "desktop-remove)", file=sys.stderr)
            return 2
    catalog.save_pool(pool)
    print(f"pool {args.pool_id} {'saved' if before else 'created'}")
    return 0


def _pool_policy(args: argparse.Namespace, db: sessionmaker[Session], catalog: Catalog) -> int:
    """Show a pool's idle policy and spare levels, or replace them from a file (checked
    whole first: a file with one wrong value changes nothing)."""
    from pools.policy_file import PoolPolicy, read_policy_file
    from pools.reclaim import PolicyError
    from pools.shifts import ReclaimPolicy
    from pools.spares import SpareSchedule

    pool = catalog.pool(args.pool_id)
    if pool is None:
        print(f"vdi: no such pool: {args.pool_id}", file=sys.stderr)
        return 2
    if args.file is None:
        with db() as s:
            row = s.get(PoolRow, pool.id)
            assert row is not None
            stored, spares = row.reclaim_policy, row.spare_schedule
        try:
            shown = PoolPolicy(ReclaimPolicy.from_json(stored, persistent=pool.persistent),
                               SpareSchedule.from_json(spares, pool.max_size) if spares
                               else None)
        except PolicyError as e:
            print(f"vdi: pool {pool.id}: the stored policy is unusable ({e}); the broker "
                  "leaves its desktops alone until a good one is set", file=sys.stderr)
            return 1
        print(json.dumps(shown.to_json(), indent=2, ensure_ascii=False))
        return 0
    try:
        policy = read_policy_file(args.file, persistent=pool.persistent,
                                  max_size=pool.max_size)
    except PolicyError as e:
        print(f"vdi: {args.file}: {e}", file=sys.stderr)
        return 2
    with db.begin() as s:
        s.execute(update(PoolRow).where(PoolRow.id == pool.id).values(
            reclaim_policy=policy.reclaim.to_json(),
            spare_schedule=policy.spares.to_json() if policy.spares else None))
    _audit(db, "pool-policy", pool.id, f"from {args.file.name}")
    print(f"pool {pool.id}: idle policy and spare levels saved; the broker applies them "
          "within seconds")
    return 0


def _print_reclaims(db: sessionmaker[Session], pool_id: str | None, hours: float) -> None:
    from sqlalchemy import select

    from vdi.models import ReclaimRow

    q = select(ReclaimRow).where(ReclaimRow.at >= utc_now() - timedelta(hours=hours))
    if pool_id:
        q = q.where(ReclaimRow.pool_id == pool_id)
    with db() as s:
        for r in s.scalars(q.order_by(ReclaimRow.at.desc())):
            print(f"{r.at:%Y-%m-%d %H:%M:%S}\t{r.pool_id}\t{r.desktop_id}\t{r.username}\t"
                  f"{r.action}\t{r.cause}\t{r.shift}\t{r.reason}")


def _default_host(settings: Settings) -> Host:
    """The settings' host, as the broker registers it on its first start."""
    return Host(uri=settings.libvirt_uri, name="local", graphics_listen=settings.graphics_listen,
                storage_pool=settings.storage_pool, storage_dir=str(settings.storage_dir),
                log_dir="")


def _cli_actor() -> str:
    return f"cli:{getpass.getuser()}"


def _audit(db: sessionmaker[Session], action: str, target: str, detail: str) -> None:
    AuditLog(db).record(actor=_cli_actor(), role="admin", action=action, target=target,
                        source="cli", outcome="ok", detail=detail)


if __name__ == "__main__":
    sys.exit(main())
