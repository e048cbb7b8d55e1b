"""The `vdi` commands that call the broker's API with a personal API token
(docs/api-tokens.md): `login`, `logout`, `status`, and the admin commands in `REMOTE`
when an API is configured (vdi.api_client). Without one, those admin commands work on
the database directly, as on the broker's own host (vdi.cli); `--local` asks for that
even when an API is configured. The bootstrap commands (`migrate`, `serve`) are always
local.

A command through the API is a function (args, client) -> exit status registered in
`REMOTE` under the command's name: it sends what the parser read and prints the answer.
One for a new route takes a few lines:

    def _pool_set(args, api):
        api.post(f"/api/admin/pools/{quote(args.pool_id)}", {"name": args.name, ...})
        print(f"pool {args.pool_id} saved")
        return 0

    REMOTE["pool-set"] = _pool_set
"""

from __future__ import annotations

import argparse
import csv
import getpass
import io
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import quote

from vdi.api_client import (
    ApiClient,
    ApiConfig,
    ApiError,
    check_url,
    config_path,
    language_of,
    load_config,
    save_config,
)
from vdi.progress import ProgressBar

POLL_S = 1.0
RemoteCommand = Callable[[argparse.Namespace, ApiClient], int]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    li = sub.add_parser("login", help="keep the broker's address and a personal API token "
                                      "(made on the broker's API tokens page) for the "
                                      "admin commands; the token is read from the "
                                      "terminal or standard input, never the command line")
    li.add_argument("url", help="the broker's address, e.g. https://vdi.district.example")
    lo = sub.add_parser("logout", help="forget the address and token 'vdi login' kept")
    lo.add_argument("--revoke", action="store_true",
                    help="also revoke the token on the broker")
    sub.add_parser("status", help="through the API: each pool's desktops, each host's load, "
                                  "alerts (the system administrator's dashboard)")


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int | None:
    """Run the command through the API: its exit status, or None when no API is
    configured and the command has a local way (the caller then runs that)."""
    try:
        if args.command == "login":
            return _login(args, environ)
        if args.command == "logout":
            return _logout(args, environ)
        config = load_config(environ)
        if config is None:
            if args.command in API_ONLY:
                raise ApiError(f"'vdi {args.command}' calls the broker's API: run "
                               "'vdi login URL' first, or set VDI_API_URL and VDI_API_TOKEN")
            return None
        return REMOTE[args.command](args, ApiClient(config, language=language_of(environ)))
    except ApiError as e:
        print(f"vdi: {e}", file=sys.stderr)
        return 1 if e.status else 2


def _login(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    url = check_url(args.url)
    if sys.stdin.isatty():
        token = getpass.getpass("API token (from the broker's API tokens page): ")
    else:
        token = sys.stdin.readline()
    token = token.strip()
    if not token:
        raise ApiError("no token given")
    path = config_path(environ)
    me = ApiClient(ApiConfig(url, token, str(path)), language=language_of(environ)).get(
        "/api/session")
    save_config(path, url, token)
    user, t = me.get("user", {}), me.get("token", {})
    print(f"signed in to {url} as {user.get('display_name')} ({user.get('username')}), "
          f"roles: {', '.join(me.get('roles', [])) or '-'}; token {t.get('name')!r} "
          f"({t.get('fingerprint')}) until {t.get('expires_at')}; kept in {path} (0600)")
    return 0


def _logout(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    path = config_path(environ)
    if args.revoke:
        config = load_config({k: v for k, v in environ.items()
                              if k not in ("VDI_API_URL", "VDI_API_TOKEN")})
        if config is None:
            raise ApiError(f"{path} does not exist: nothing to revoke")
        api = ApiClient(config, language=language_of(environ))
        token = api.get("/api/session").get("token", {})
        api.delete(f"/api/tokens/{int(token['id'])}")
        print(f"token {token.get('name')!r} ({token.get('fingerprint')}) revoked")
    try:
        path.unlink()
    except FileNotFoundError:
        print(f"{path} did not exist")
        return 0
    print(f"{path} removed")
    return 0


def _image_import(args: argparse.Namespace, api: ApiClient) -> int:
    if args.pool or args.no_release:
        raise ApiError("--pool and --no-release are not offered through the API yet: run "
                       "the import on the broker's host with 'vdi --local image-import'")
    if Path(args.file).is_absolute():
        raise ApiError("through the API, name the file in the broker's import folder "
                       "(setting image_import_dir), e.g. win11.qcow2, not a path")
    body: dict[str, object] = {
        "image": args.image_id, "file": str(args.file), "virtio": not args.no_virtio,
        "agent": not args.no_agent, "boot_delay_s": args.boot_delay,
        "secure_boot": args.secure_boot}
    for key, value in (("format", args.format), ("firmware", args.firmware),
                       ("os", args.os_family), ("arch", args.arch)):
        if value is not None:
            body[key] = value
    started = api.post("/api/admin/images", body)
    status_path = str(started["status"])
    bar = ProgressBar(sys.stderr)
    try:
        while True:
            st = api.get(status_path)
            bar.show(str(st["stage"]), float(st["percent"]))
            if st["state"] != "running":
                break
            time.sleep(POLL_S)
    finally:
        bar.close()
    if st["state"] != "done":
        print(f"vdi: image {args.image_id}: import {st['state']}: {st.get('message') or ''}",
              file=sys.stderr)
        return 1
    print(f"image {args.image_id}: {st.get('message') or 'imported'} (import "
          f"#{started['import']} on {api.config.url})")
    return 0


def _audit(args: argparse.Namespace, api: ApiClient) -> int:
    if args.audit_command == "export":
        params = {"days": str(args.days)}
        params.update({k: v for k, v in (("actor", args.actor), ("action", args.action)) if v})
        text = api.text("/api/admin/audit.csv", params)
        records = max(0, sum(1 for _ in csv.reader(io.StringIO(text.lstrip("\ufeff")))) - 1)
        if args.out is None:
            sys.stdout.write(text)
        else:
            args.out.write_text(text, encoding="utf-8")
            print(f"{records} records written to {args.out}", file=sys.stderr)
        return 0
    v = api.get("/api/admin/audit/verify")
    if v["intact"]:
        print(f"audit trail: {v['records']} records, chain intact"
              + (f"; last #{v['last_id']} {v['last_hash']}" if v.get("last_id") else ""))
        return 0
    print(f"audit trail: {v['records']} records read, the chain is BROKEN:")
    for problem in v["problems"]:
        print(f"  {problem}")
    return 1


def _status(args: argparse.Namespace, api: ApiClient) -> int:
    d = api.get("/api/admin/dashboard")
    print(f"at {d['at']} ({api.config.url})")
    for p in d["pools"]:
        counts = " ".join(f"{k}={p[k]}" for k in ("ready", "booting", "in_use", "disconnected",
                                                   "reclaiming", "failed") if k in p)
        print(f"pool {p['id']}\t{p['name']}\tmin_ready={p['min_ready']} "
              f"max_size={p['max_size']}\t{counts}")
    for h in d["hosts"]:
        print(f"host {h['name']}\t{h['status']}{' (maintenance)' if h['maintenance'] else ''}"
              f"\t{h['memory_used_mib']}/{h['memory_mib']} MiB\t{h['vcpus_used']}/{h['cpus']} "
              f"vCPUs\t{h['uri']}")
    for a in d["alerts"]:
        print(f"ALERT {a['kind']}\t{a['target']}\t{a['detail']}")
    return 0


def _image_release(args: argparse.Namespace, api: ApiClient) -> int:
    done = api.post(f"/api/admin/images/{quote(args.image_id)}/release",
                    {"version": args.version})
    print(f"image {args.image_id} v{args.version} released (was v{done['before']}); spares "
          "are remade as they come free")
    return 0


def _image_rollback(args: argparse.Namespace, api: ApiClient) -> int:
    done = api.post(f"/api/admin/images/{quote(args.image_id)}/rollback", {})
    print(f"image {args.image_id} rolled back from v{done['before']} to v{done['released']}")
    return 0


def _host_maintenance(args: argparse.Namespace, api: ApiClient) -> int:
    mode = "drain" if args.command == "host-drain" else args.state
    done = api.post(f"/api/admin/hosts/{quote(args.host)}/maintenance", {"mode": mode})
    print(f"host {done['name']}: maintenance {'on' if done['maintenance'] else 'off'}")
    moves = done.get("moves")
    if isinstance(moves, dict):
        print(f"host {done['name']}: {moves['migrated']} dedicated desktop(s) to live-migrate, "
              f"{moves['relocated']} spare(s) to remake elsewhere, {moves['waiting']} waiting "
              "(no shared storage); the broker's worker does the moves")
    return 0


def _desktop_remove(args: argparse.Namespace, api: ApiClient) -> int:
    done = api.post(f"/api/admin/desktops/{quote(args.desktop_id)}/remove",
                    {"even_if_held": bool(args.yes)})
    held = f" (held by {done['held_by']})" if done.get("held_by") else ""
    print(f"desktop {args.desktop_id}{held}: removal queued; the broker deletes its domain "
          "and disk, and the pool makes a fresh one when it needs one")
    return 0


def _pool_set(args: argparse.Namespace, api: ApiClient) -> int:
    body: dict[str, object] = {k: v for k, v in (
        ("name", args.name), ("image", args.image), ("kind", args.kind),
        ("vcpus", args.vcpus), ("memory_mib", args.memory_mib),
        ("min_ready", args.min_ready), ("max_size", args.max_size), ("groups", args.group),
        ("boot_timeout_s", args.boot_timeout), ("secure_boot", args.secure_boot),
        ("network", args.network)) if v is not None}
    if args.host is not None:
        body["hosts"] = [] if args.host == ["any"] else args.host
    if args.office is not None:
        body["office"] = None if args.office == "none" else args.office
    if args.image_version is not None:
        if args.image_version == "released":
            body["image_version"] = None
        elif args.image_version.isascii() and args.image_version.isdigit():
            body["image_version"] = int(args.image_version)
        else:
            raise ApiError("--image-version: a version number or 'released'")
    if args.user_data is not None:
        try:
            body["user_data"] = args.user_data.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ApiError(f"--user-data {args.user_data}: cannot read it as UTF-8 text "
                           f"({e})") from e
    path = f"/api/admin/pools/{quote(args.pool_id)}"
    try:
        api.get(path)
    except ApiError as e:
        if e.status != 404:
            raise
        api.post("/api/admin/pools", {"id": args.pool_id, **body})
        print(f"pool {args.pool_id} created")
        return 0
    if not body:
        raise ApiError("give at least one option to change")
    api.patch(path, body)
    print(f"pool {args.pool_id} saved")
    return 0


REMOTE: dict[str, RemoteCommand] = {
    "image-import": _image_import, "audit": _audit, "status": _status,
    "image-release": _image_release, "image-rollback": _image_rollback,
    "host-maintenance": _host_maintenance, "host-drain": _host_maintenance,
    "desktop-remove": _desktop_remove, "pool-set": _pool_set,
}
# commands with no local way: they need an API configured
API_ONLY = frozenset({"status"})
# the commands this module runs (login and logout always; the rest when configured)
COMMANDS = frozenset({"login", "logout", *REMOTE})
