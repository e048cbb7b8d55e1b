"""The admin's JSON API (the admin console uses it): the dashboard; golden images, their
versions, importing one with its progress, releasing, rolling back and trying a version in
a pool. Access is declared beside each route (web.access)."""

from __future__ import annotations

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.admin_views import ImageView
from broker.errors import BadRequest
from broker.system_admin import AdminInvalid
from pools.imports import ImportOptions
from vdi.domain import Arch, Firmware, OsFamily, Permission
from web.access import Access, Call, route
from web.api import id_param, read_json

START = Access(Permission.MANAGE_IMAGES, csrf=True)
READ_IMPORTS = Access(Permission.MANAGE_IMAGES)
CHANGE_IMAGES = Access(Permission.MANAGE_IMAGES, csrf=True)


def import_options(data: dict[str, object]) -> ImportOptions:
    """The request's options; raises BadRequest naming the one that is wrong."""
    def choice(key: str, kind: type[Firmware] | type[OsFamily] | type[Arch]) -> object:
        value = data.get(key)
        if value is None:
            return None
        try:
            return kind(str(value))
        except ValueError as e:
            raise BadRequest("An import option is not valid.") from e

    def flag(key: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            raise BadRequest("An import option is not valid.")
        return value

    delay = data.get("boot_delay_s", 0)
    fmt = data.get("format")
    if not isinstance(delay, int) or isinstance(delay, bool) or (
            fmt is not None and not isinstance(fmt, str)):
        raise BadRequest("An import option is not valid.")
    firmware, os_family, arch = choice("firmware", Firmware), choice("os", OsFamily), choice(
        "arch", Arch)
    return ImportOptions(
        format=fmt, firmware=firmware if isinstance(firmware, Firmware) else None,
        os_family=os_family if isinstance(os_family, OsFamily) else None,
        arch=arch if isinstance(arch, Arch) else None, virtio=flag("virtio", True),
        agent=flag("agent", True), boot_delay_s=delay, secure_boot=flag("secure_boot", False))


async def start_import(call: Call) -> Response:
    """Start importing a file of the import folder: {"image": name, "file": name in the
    folder, options...}. 202 with the import's id; the import runs in the background."""
    data = await read_json(call)
    if data is None or not isinstance(data.get("image"), str) or not isinstance(
            data.get("file"), str):
        raise BadRequest("Send a JSON object with image and file.")
    import_id = await call.api.image_imports.start(
        call.signed_in.principal, str(data["image"]), str(data["file"]), import_options(data))
    return JSONResponse({"import": import_id,
                         "status": f"/api/admin/images/imports/{import_id}"}, status_code=202)


async def import_status(call: Call) -> Response:
    st = call.api.image_imports.status(id_param(call, "import_id"))
    return JSONResponse({"import": st.id, "image": st.image_id, "file": st.source,
                         "state": st.state, "stage": st.stage, "percent": st.percent,
                         "message": st.message, "version": st.version,
                         "started_by": st.started_by, "started_at": st.started_at.isoformat()})


async def dashboard(call: Call) -> Response:
    """Each pool's desktops by what they do, each host's load and state, alerts."""
    d = await call.api.dashboard.read()
    return JSONResponse({
        "at": d.at.isoformat(),
        "pools": [{"id": p.id, "name": p.name, "office": p.office, "min_ready": p.min_ready,
                   "max_size": p.max_size, **p.counts} for p in d.pools],
        "hosts": [{"name": h.name, "uri": h.uri, "status": h.status,
                   "maintenance": h.maintenance, "memory_mib": h.memory_mib,
                   "memory_used_mib": h.memory_used_mib, "cpus": h.cpus,
                   "vcpus_used": h.vcpus_used, "arches": list(h.arches), "error": h.error}
                  for h in d.hosts],
        "alerts": [{"kind": a.kind, "target": a.target, "detail": a.detail}
                   for a in d.alerts]})


def image_json(i: ImageView) -> dict[str, object]:
    return {"id": i.id, "released": i.released, "following": list(i.following),
            "versions": [{"version": v.version, "state": v.state, "digest": v.digest,
                          "firmware": v.firmware, "os": v.os_family, "arch": v.arch,
                          "secure_boot": v.secure_boot, "disk_bytes": v.disk_bytes,
                          "imported_by": v.imported_by,
                          "imported_at": v.imported_at.isoformat(), "hosts": list(v.hosts),
                          "trial_pools": list(v.trial_pools)} for v in i.versions]}


async def images(call: Call) -> Response:
    """Every image with its versions: released, the one before, trials."""
    found = await call.api.system_admin.images()
    return JSONResponse({"images": [image_json(i) for i in found]})


async def import_files(call: Call) -> Response:
    """The files of the import folder that an import may name."""
    names = await call.api.image_imports.files()
    return JSONResponse({"files": names})


def _version(data: dict[str, object], key: str = "version") -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 1 << 31:
        raise AdminInvalid(f"{key}: a version number (1 or more)")
    return value


async def release(call: Call) -> Response:
    """{"version": n}: the pools that follow the image get it (as their desktops are
    made afresh)."""
    data = await read_json(call)
    if data is None:
        raise AdminInvalid("send a JSON object with version")
    image = call.request.path_params["image"]
    before = await call.api.system_admin.release(call.signed_in.principal, call.source,
                                                 image, _version(data))
    return JSONResponse({"image": image, "released": data["version"], "before": before})


async def rollback(call: Call) -> Response:
    """Release the newest version older than the released one."""
    image = call.request.path_params["image"]
    was, now = await call.api.system_admin.rollback(call.signed_in.principal, call.source,
                                                    image)
    return JSONResponse({"image": image, "released": now, "before": was})


async def trial(call: Call) -> Response:
    """{"pool": id, "version": n}: that pool runs the version whatever is released;
    {"pool": id, "version": null}: it follows the released version again."""
    data = await read_json(call)
    if data is None or not isinstance(data.get("pool"), str) or "version" not in data:
        raise AdminInvalid("send a JSON object with pool and version (a number, or null)")
    version = None if data["version"] is None else _version(data)
    image = call.request.path_params["image"]
    await call.api.system_admin.trial(call.signed_in.principal, call.source, image,
                                      str(data["pool"]), version)
    return JSONResponse({"image": image, "pool": data["pool"], "version": version})


routes: list[Route] = [
    route("/api/admin/dashboard", "GET", Access(Permission.VIEW_SERVICE), dashboard),
    route("/api/admin/images", "GET", Access(Permission.VIEW_SERVICE), images),
    route("/api/admin/images", "POST", START, start_import),
    route("/api/admin/images/files", "GET", READ_IMPORTS, import_files),
    route("/api/admin/images/{image}/release", "POST", CHANGE_IMAGES, release),
    route("/api/admin/images/{image}/rollback", "POST", CHANGE_IMAGES, rollback),
    route("/api/admin/images/{image}/trial", "POST", CHANGE_IMAGES, trial),
    route("/api/admin/images/imports/{import_id}", "GET", READ_IMPORTS, import_status),
]
