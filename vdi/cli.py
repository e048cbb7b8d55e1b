"""The `vdi` command: run the broker and manage its records.

The top layer: it parses, calls the admin's operations (broker.admin) and prints. The
server and the real hosts are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from broker.admin import Admin, AdminRefused, PoolChanges
from broker.reclaims import MAX_HOURS, read_reclaims
from pools.hosts import Host
from pools.hypervisor import NetworkSpec
from pools.image_file import FORMATS
from pools.imports import ImportOptions
from vdi import cli_api, cli_district
from vdi.catalog import CatalogError
from vdi.db import make_engine, migrate, session_factory
from vdi.domain import Arch, Desktop, Firmware, OsFamily, PoolKind, utc_now
from vdi.progress import ProgressBar
from vdi.settings import Settings, SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vdi", description="VDI connection broker")
    parser.add_argument("--config", help="TOML settings file (default: $VDI_CONFIG)")
    parser.add_argument("--local", action="store_true",
                        help="work on the database directly even when the broker's API is "
                             "configured (vdi login, VDI_API_URL): on the broker's host")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="create or upgrade the database schema")
    serve = sub.add_parser("serve", help="run the broker (HTTP + websocket console)")
    serve.add_argument("--role", choices=["both", "web", "worker"], default="both",
                       help="web: the broker's pages, API and consoles only; worker: the pool "
                            "worker only (several web processes can share one worker); "
                            "both (default)")
    pub = sub.add_parser("image-import", help="import a golden image (a whole bootable disk: "
                                              "qcow2, raw, vmdk or vhdx) as a new version")
    pub.add_argument("image_id", help="the image's name (lower-case letters, digits, '-')")
    pub.add_argument("file", type=Path, help="the disk image file")
    pub.add_argument("--format", choices=list(FORMATS),
                     help="the file's format (default: from its name, checked against its "
                          "content)")
    pub.add_argument("--firmware", choices=[f.value for f in Firmware],
                     help="how it boots (default: from its partition table: GPT with an EFI "
                          "partition is uefi, MBR is bios)")
    pub.add_argument("--os", choices=[o.value for o in OsFamily], dest="os_family",
                     help="its OS family (default: windows if it has Microsoft partitions)")
    pub.add_argument("--arch", choices=[a.value for a in Arch],
                     help="default: read off the EFI partition's bootloaders, else x86_64")
    pub.add_argument("--no-virtio", action="store_true",
                     help="it has no virtio drivers: SATA disk and e1000 network card")
    pub.add_argument("--no-agent", action="store_true",
                     help="it runs no QEMU guest agent: it counts as up --boot-delay seconds "
                          "after its start")
    pub.add_argument("--boot-delay", type=int, default=0, metavar="SECONDS")
    pub.add_argument("--secure-boot", action="store_true",
                     help="its bootloader is signed for UEFI secure boot")
    pub.add_argument("--pool", action="append", default=[],
                     help="try the new version on this pool only (repeat); the pools that "
                          "follow the image keep the released version")
    pub.add_argument("--no-release", action="store_true",
                     help="import without rolling it out")
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
    ps.add_argument("--boot-timeout", type=int, metavar="SECONDS",
                    help="a desktop whose guest is not up this long after its start is "
                         "reset once, then replaced (default 300)")
    ps.add_argument("--secure-boot", action=argparse.BooleanOptionalAction, default=None,
                    help="UEFI secure boot (for images imported with --secure-boot)")
    ps.add_argument("--network", help="its desktops' network: none (the default), "
                                      "network:NAME (see network-set), bridge:NAME (a host "
                                      "bridge), or user (QEMU user-mode: reaches the host's "
                                      "loopback services; not on a broker's host)")
    ps.add_argument("--office", help="the street office it serves (vdi offices); 'none': "
                                      "the district's own")
    ps.add_argument("--user-data", type=Path, metavar="FILE",
                    help="customisation data for each desktop's NoCloud seed (cloud-init or "
                         "cloudbase-init: e.g. a domain-join answer); an empty file clears it")
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
    ns = sub.add_parser("network-set", help="create or change a department's network, "
                                             "defined on each host as desktops need it")
    ns.add_argument("name", help="1-11 lower-case letters, digits or '-'")
    ns.add_argument("--subnet", required=True, help="a private IPv4 range, e.g. 10.231.1.0/24")
    ns.add_argument("--nat", action="store_true",
                    help="let its desktops out through the host (default: isolated: they "
                         "reach each other only)")
    sub.add_parser("networks", help="list the departments' networks")
    sub.add_parser("pools", help="list pools")
    sub.add_parser("desktops", help="list desktops")
    cli_district.add_parsers(sub)
    cli_api.add_parsers(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.command in cli_api.COMMANDS and not (args.local and args.command in LOCAL):
        through_api = cli_api.run(args, os.environ)
        if through_api is not None:
            return through_api
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


def _run(args: argparse.Namespace, settings: Settings) -> int:
    url = settings.effective_database_url
    if args.command == "serve":
        from vdi.serve import serve

        return serve(settings, args.role)
    migrate(url)
    db = session_factory(make_engine(url))
    if args.command == "migrate":
        print(f"database schema is current ({url.split('://')[0]})")
        return 0
    admin = Admin(db, actor=f"cli:{getpass.getuser()}", clock=utc_now)
    try:
        return _COMMANDS[args.command](args, settings, admin)
    except AdminRefused as e:
        print(f"vdi: {e}", file=sys.stderr)
        return e.status


def _image_import(args: argparse.Namespace, settings: Settings, admin: Admin) -> int:
    from vdi.wiring import libvirt_factory  # the real hosts, only for this command

    for pool_id in args.pool:
        if admin.catalog.pool(pool_id) is None:
            raise AdminRefused(f"no such pool: {pool_id}")
    records = admin.hosts.hosts() or [_default_host(settings)]
    make = libvirt_factory(settings)
    options = ImportOptions(
        format=args.format, firmware=Firmware(args.firmware) if args.firmware else None,
        os_family=OsFamily(args.os_family) if args.os_family else None,
        arch=Arch(args.arch) if args.arch else None,
        virtio=not args.no_virtio, agent=not args.no_agent, boot_delay_s=args.boot_delay,
        secure_boot=args.secure_boot)
    bar = ProgressBar(sys.stderr)
    try:
        done = admin.import_image(args.image_id, args.file, options,
                                  [(r, make(r)) for r in records],
                                  Path(settings.state_dir) / "images", bar.show)
    finally:
        bar.close()
    version, t = done.version, done.prepared.disk.traits
    print(f"image {args.image_id} v{version}: {t.firmware.value}, {t.os_family.value}, "
          f"{t.arch.value}, {done.prepared.disk.disk_bytes / (1 << 30):.2f} GiB disk, "
          f"sha256 {done.prepared.disk.digest[:16]}")
    for copy in done.copies:
        print(f"  on {copy.host.name} ({copy.host.uri}): {copy.files.disk_path} (checked)")
    for pool_id in args.pool:
        admin.pin_pool(pool_id, args.image_id, version)
        print(f"pool {pool_id} now runs {args.image_id} v{version} (a trial)")
    if not args.pool and not args.no_release:
        if admin.images.released_version(args.image_id) == version:
            print(f"image {args.image_id} v{version} is the released version already")
        else:
            before = admin.release_image(args.image_id, version)
            print(f"image {args.image_id} v{version} released"
                  + (f" (was v{before})" if before and before != version else ""))
    return 0


def _image_release(args: argparse.Namespace, settings: Settings, admin: Admin) -> int:
    before = admin.release_image(args.image_id, args.version)
    print(f"image {args.image_id} v{args.version} released (was v{before}); spares are "
          "replaced now, desktops in use when their clerk logs off")
    return 0


def _image_rollback(args: argparse.Namespace, settings: Settings, admin: Admin) -> int:
    was, now = admin.rollback_image(args.image_id)
    print(f"image {args.image_id} rolled back from v{was} to v{now}")
    return 0


def _images(args: argparse.Namespace, settings: Settings, admin: Admin) -> int:
    traits = {(v.image_id, v.version): v.traits for v in admin.images.versions()}
    for image_id, version, host_uri, published in admin.images.listing():
        mark = "released" if admin.images.released_version(image_id) == version else ""
        t = traits.get((image_id, version))
        what = f"{t.firmware.value}/{t.os_family.value}/{t.arch.value}" if t else "?"
        print(f"{image_id}\tv{version}\t{what}\t{host_uri}\t{published:%Y-%m-%d %H:%M}"
              f"\t{mark}")
    return 0


def _pool_set(args: argparse.Namespace, settings: Settings, admin: Admin) -> int:
    version: int | None = None
    follow = False
    if args.image_version is not None:
        if args.image_version == "released":
            follow = True
        elif args.image_version.isascii() and args.image_version.isdigit() \
                and 0 < int(args.image_version) < 1 << 31:
            version = int(args.image_version)
        else:
            raise AdminRefused("--image-version: a version number or 'released'")
    changes = PoolChanges(
        display_name=args.name, image=args.image,
        kind=PoolKind(args.kind) if args.kind is not None else None, vcpus=args.vcpus,
        memory_mib=args.memory_mib, min_ready=args.min_ready, max_size=args.max_size,
        entitled_groups=tuple(args.group) if args.group is not None else None,
        hosts=(() if args.host == ["any"] else tuple(args.host)) if args.host is not None
        else None, image_version=version, follow_released=follow,
        boot_timeout_s=args.boot_timeout, secure_boot=args.secure_boot, network=args.network,
        user_data=_read_text(args.user_data) if args.user_data is not None else None,
        office=args.office)
    _, created = admin.set_pool(args.pool_id, changes)
    print(f"pool {args.pool_id} {'created' if created else 'saved'}")
    return 0


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AdminRefused(f"--user-data {path}: cannot read it as UTF-8 text ({e})") from e


def _pool_policy(args: argparse.Namespace, settings: Settings, admin: Admin) -> int:
    if args.file is None:
        shown = admin.pool_policy(args.pool_id)
        print(json.dumps(shown.to_json(), indent=2, ensure_ascii=False))
        return 0
    admin.set_pool_policy(args.pool_id, args.file)
    print(f"pool {args.pool_id}: idle policy and spare levels saved; the broker applies them "
          "within seconds")
    return 0


def _reclaims(args: argparse.Namespace, settings: Settings, admin: Admin) -> int:
    if not 0 < args.hours <= MAX_HOURS:  # also NaN and infinity
        raise AdminRefused(f"--hours: a number of hours, more than 0 and at most {MAX_HOURS}")
    for r in read_reclaims(admin.db, utc_now(), hours=args.hours, pool=args.pool, limit=None):
        print(f"{r.at:%Y-%m-%d %H:%M:%S}\t{r.pool_id}\t{r.desktop_id}\t{r.username}\t"
              f"{r.action}\t{r.cause}\t{r.shift}\t{r.reason}")
    return 0


def _host_add(args: argparse.Namespace, settings: Settings, admin: Admin) -> int:
    admin.add_host(Host(uri=args.uri, name=args.name, graphics_listen=args.graphics_listen,
                        storage_pool=args.storage_pool, storage_dir=args.storage_dir,
                        log_dir=args.log_dir, shared_storage=args.shared_storage))
    print(f"host {args.name} saved; the broker asks it for its capacity within seconds "
          "(import the images again to put them on it: vdi image-import)")
    return 0


def _hosts(args: argparse.Namespace, settings: Settings, admin: Admin) -> int:
    for h in admin.hosts.hosts():
        flags = ",".join(f for f, on in (("maintenance", h.maintenance),
                                         ("shared", h.shared_storage)) if on) or "-"
        arches = ",".join(sorted(a.value for a in h.arches)) or "-"
        print(f"{h.name}\t{h.status.value}\t{flags}\t{h.memory_mib} MiB\t{h.cpus} CPUs\t"
              f"{arches}\t{h.uri}\t{h.error or ''}")
    return 0


def _host_maintenance(args: argparse.Namespace, settings: Settings, admin: Admin) -> int:
    drain = args.command == "host-drain"
    on = drain or args.state == "on"
    host, moves = admin.set_maintenance(args.host, on, drain=drain)
    print(f"host {host.name}: maintenance {'on' if on else 'off'}")
    if moves is not None:
        print(f"host {host.name}: {moves.migrated} dedicated desktop(s) to live-migrate, "
              f"{moves.relocated} spare(s) to remake elsewhere, {moves.waiting} waiting "
              "(no shared storage); desktops in use of floating pools move when their "
              "clerk logs off. The broker's worker does the moves.")
    return 0


def _desktop_remove(args: argparse.Namespace, settings: Settings, admin: Admin) -> int:
    admin.remove_desktop(args.desktop_id, even_if_held=args.yes)
    print(f"desktop {args.desktop_id}: removal queued; the broker deletes its domain and "
          "disk (the pool makes a new spare if it needs one)")
    return 0


def _pools(args: argparse.Namespace, settings: Settings, admin: Admin) -> int:
    for p, level in admin.spare_levels():
        runs = f"v{p.image_version}" if p.image_version else "released"
        print(f"{p.id}\t{p.kind.value}\t{p.image} ({runs})\tmin_ready={p.min_ready}\t"
              f"max_size={p.max_size}\t{p.display_name}\tspares now: "
              f"{min(level.min_ready, p.max_size)} ({level.reason})")
    return 0


def _network_set(args: argparse.Namespace, settings: Settings, admin: Admin) -> int:
    spec = NetworkSpec(args.name, args.subnet, "nat" if args.nat else "isolated")
    new = admin.set_network(spec)
    print(f"network {spec.name} {'created' if new else 'saved'} ({spec.mode}, "
          f"{spec.subnet}); pools join it with pool-set --network network:{spec.name}")
    return 0


def _networks(args: argparse.Namespace, settings: Settings, admin: Admin) -> int:
    for n in admin.networks.all():
        print(f"{n.name}\t{n.mode}\t{n.subnet}\t{n.libvirt_name}")
    return 0


def _desktops(args: argparse.Namespace, settings: Settings, admin: Admin) -> int:
    for d in admin.catalog.desktops():
        print(f"{d.id}\t{d.state.value}\t{d.assigned_user or '-'}\t{d.domain_name}\t"
              f"v{d.image_version}\t{_console(d)}\t{d.host_uri}\t"
              f"{(d.error or '').splitlines()[0] if d.error else ''}\t"
              f"{' '.join(d.guest_addresses) or '-'}")
    return 0


def _console(d: Desktop) -> str:
    return f"{d.console.kind.value}://{d.console.host}:{d.console.port}" if d.console else "-"


def _default_host(settings: Settings) -> Host:
    """The settings' host, as the broker registers it on its first start."""
    return Host(uri=settings.libvirt_uri, name="local", graphics_listen=settings.graphics_listen,
                storage_pool=settings.storage_pool, storage_dir=str(settings.storage_dir),
                log_dir="")


Command = Callable[[argparse.Namespace, Settings, Admin], int]
# the commands that work on the database directly (through the API instead when one is
# configured and the command is in vdi.cli_api.REMOTE)
_COMMANDS: dict[str, Command] = {
    "image-import": _image_import, "network-set": _network_set, "networks": _networks,
    "image-release": _image_release,
    "image-rollback": _image_rollback, "images": _images, "pool-set": _pool_set,
    "pool-policy": _pool_policy, "reclaims": _reclaims, "host-add": _host_add,
    "hosts": _hosts, "host-maintenance": _host_maintenance, "host-drain": _host_maintenance,
    "desktop-remove": _desktop_remove, "pools": _pools, "desktops": _desktops,
    **cli_district.COMMANDS,
}
LOCAL = frozenset(_COMMANDS)
