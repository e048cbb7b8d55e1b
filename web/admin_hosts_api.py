"""The system administrator's hosts and desktops: list and add hosts, maintenance on, off
or drain; list desktops (state, clerk, host, addresses, age) and remove one (the pool
makes a fresh one in its place when it needs one); and read who is connected from where
(ending a session stays the security administrator's)."""

from __future__ import annotations

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.system_admin import AdminInvalid
from pools.hosts import Host
from vdi.domain import Permission
from web.access import Access, Call, route
from web.api import read_json

READ = Access(Permission.VIEW_SERVICE)
CHANGE = Access(Permission.MANAGE_SERVICE, csrf=True)


async def hosts(call: Call) -> Response:
    views = await call.api.system_admin.hosts()
    return JSONResponse({"hosts": [
        {"name": v.host.name, "uri": v.host.uri, "status": v.host.status.value,
         "maintenance": v.host.maintenance, "shared_storage": v.host.shared_storage,
         "memory_mib": v.host.memory_mib, "memory_used_mib": v.memory_used_mib,
         "cpus": v.host.cpus, "vcpus_used": v.vcpus_used, "desktops": v.desktops,
         "arches": sorted(a.value for a in v.host.arches),
         "last_seen_at": v.host.last_seen_at.isoformat() if v.host.last_seen_at else None,
         "error": v.host.error} for v in views]})


def _field(data: dict[str, object], key: str, *, required: bool = False) -> str:
    value = data.get(key, "")
    if not isinstance(value, str) or len(value) > 1024 or (required and not value.strip()):
        raise AdminInvalid(f"{key}: a text{' (needed)' if required else ''}")
    return value.strip()


async def add_host(call: Call) -> Response:
    """{"uri", "name", "graphics_listen", "storage_pool"?, "storage_dir"?, "log_dir"?,
    "shared_storage"?}: 201; the broker asks the host for its capacity within seconds."""
    data = await read_json(call)
    if data is None:
        raise AdminInvalid("send a JSON object with uri, name and graphics_listen")
    shared = data.get("shared_storage", False)
    if not isinstance(shared, bool):
        raise AdminInvalid("shared_storage: true or false")
    host = Host(uri=_field(data, "uri", required=True), name=_field(data, "name", required=True),
                graphics_listen=_field(data, "graphics_listen", required=True),
                storage_pool=_field(data, "storage_pool"), storage_dir=_field(data, "storage_dir"),
                log_dir=_field(data, "log_dir"), shared_storage=shared)
    await call.api.system_admin.add_host(call.signed_in.principal, call.source, host)
    return JSONResponse({"name": host.name, "uri": host.uri}, status_code=201)


async def maintenance(call: Call) -> Response:
    """{"mode": "on" | "off" | "drain"}; a drain answers the moves it asked for."""
    data = await read_json(call)
    if data is None or not isinstance(data.get("mode"), str):
        raise AdminInvalid("send a JSON object with mode: on, off or drain")
    host, moves = await call.api.system_admin.maintenance(
        call.signed_in.principal, call.source, call.request.path_params["host"],
        str(data["mode"]))
    return JSONResponse({"name": host.name, "maintenance": host.maintenance, "moves": None
                         if moves is None else {"migrated": moves.migrated,
                                                "relocated": moves.relocated,
                                                "restarted": moves.restarted,
                                                "waiting": moves.waiting}})


async def desktops(call: Call) -> Response:
    views = await call.api.system_admin.desktops()
    return JSONResponse({"desktops": [
        {"id": d.id, "pool": d.pool, "state": d.state, "power": d.power, "clerk": d.clerk,
         "host": d.host, "addresses": list(d.addresses), "image_version": d.image_version,
         "created_at": d.created_at.isoformat(), "error": d.error} for d in views]})


async def remove_desktop(call: Call) -> Response:
    """{"even_if_held": bool}: a desktop a clerk holds is removed (its disk lost) only
    with true."""
    data = await read_json(call)
    if data is None or not isinstance(data.get("even_if_held"), bool):
        raise AdminInvalid("send a JSON object with even_if_held: true or false")
    owner = await call.api.system_admin.remove_desktop(
        call.signed_in.principal, call.source, call.request.path_params["desktop_id"],
        bool(data["even_if_held"]))
    return JSONResponse({"desktop": call.request.path_params["desktop_id"], "held_by": owner})


async def sessions(call: Call) -> Response:
    """Who is signed in, from where, using which desktops (read; recorded)."""
    views = await call.api.security.sessions(call.signed_in.principal, call.source)
    return JSONResponse({"sessions": [
        {"username": v.session.username, "name": v.session.display_name,
         "roles": list(v.session.roles), "source": v.session.source,
         "since": v.session.created_at.isoformat(),
         "last_seen": v.session.last_seen_at.isoformat(), "desktops": list(v.desktops)}
        for v in views]})


routes: list[Route] = [
    route("/api/admin/hosts", "GET", READ, hosts),
    route("/api/admin/hosts", "POST", CHANGE, add_host),
    route("/api/admin/hosts/{host}/maintenance", "POST", CHANGE, maintenance),
    route("/api/admin/desktops", "GET", READ, desktops),
    route("/api/admin/desktops/{desktop_id}/remove", "POST", CHANGE, remove_desktop),
    route("/api/admin/sessions", "GET", READ, sessions),
]
