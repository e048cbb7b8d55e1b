"""The `vdi` command: run the broker and manage its records.

This is the composition root: it alone reaches into `web` and `pools` (imported inside
the commands that need them), so that `vdi` itself stays free of starlette and libvirt.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from vdi.catalog import Catalog, CatalogError
from vdi.db import make_engine, migrate, session_factory
from vdi.domain import Pool, PoolKind
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
    ps = sub.add_parser("pool-set", help="create or update a desktop pool")
    ps.add_argument("pool_id")
    ps.add_argument("--name", required=True, help="display name shown to clerks")
    ps.add_argument("--image", required=True)
    ps.add_argument("--kind", choices=[k.value for k in PoolKind], default="floating")
    ps.add_argument("--vcpus", type=int, default=1)
    ps.add_argument("--memory-mib", type=int, default=256)
    ps.add_argument("--min-ready", type=int, default=1)
    ps.add_argument("--max-size", type=int, default=4)
    ps.add_argument("--group", action="append", default=[], help="entitled group DN (repeat)")
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
        from pools.libvirt_host import LibvirtHost

        host = LibvirtHost(settings.libvirt_uri, storage_pool=settings.storage_pool,
                           storage_dir=settings.storage_dir, domain_type=settings.domain_type,
                           graphics_listen=settings.graphics_listen,
                           cache_dir=settings.state_dir / "hosts")
        store = ImageStore(db)
        try:
            version, files = store.publish(host, args.image_id, args.source_dir)
        except (HypervisorError, FileNotFoundError) as e:
            print(f"vdi: {e}", file=sys.stderr)
            return 1
        print(f"image {args.image_id} v{version} published on {host.uri}: {files.disk_path}")
    elif args.command == "pool-set":
        catalog.save_pool(Pool(id=args.pool_id, display_name=args.name,
                               kind=PoolKind(args.kind), image=args.image, vcpus=args.vcpus,
                               memory_mib=args.memory_mib, min_ready=args.min_ready,
                               max_size=args.max_size, entitled_groups=tuple(args.group)))
        print(f"pool {args.pool_id} saved")
    elif args.command == "pools":
        for p in catalog.pools():
            print(f"{p.id}\t{p.kind.value}\t{p.image}\tmin_ready={p.min_ready}\t"
                  f"max_size={p.max_size}\t{p.display_name}")
    elif args.command == "desktops":
        for d in catalog.desktops():
            print(f"{d.id}\t{d.state.value}\t{d.assigned_user or '-'}\t{d.domain_name}\t"
                  f"{d.vnc_host}:{d.vnc_port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
