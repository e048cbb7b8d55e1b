"""The system administrator's pools: list, read, create, change -- image, kind, sizes,
groups, network, office, and the idle policy and spare schedule as JSON (the policy
file's tables, checked by the same rules: pools.policy_file)."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.admin import PoolChanges
from broker.admin_views import PoolView
from broker.system_admin import AdminInvalid
from vdi.domain import Permission, PoolKind
from web.access import Access, Call, route
from web.api import read_json

READ = Access(Permission.VIEW_SERVICE)
CHANGE = Access(Permission.MANAGE_SERVICE, csrf=True)
TEXT_MAX = 4096
USER_DATA_MAX = 64 * 1024
# a pool's values with its user-data and its idle policy and spare schedule
POOL_BODY = 2 * USER_DATA_MAX + 64 * 1024


def pool_json(v: PoolView) -> dict[str, Any]:
    p = v.pool
    return {"id": p.id, "name": p.display_name, "kind": p.kind.value, "image": p.image,
            "image_version": p.image_version, "vcpus": p.vcpus, "memory_mib": p.memory_mib,
            "min_ready": p.min_ready, "max_size": p.max_size,
            "groups": list(p.entitled_groups), "hosts": list(p.hosts),
            "network": p.network, "office": p.office, "boot_timeout_s": p.boot_timeout_s,
            "secure_boot": p.secure_boot, "console": p.console.value,
            "user_data_set": bool(p.user_data), "policy": v.policy,
            "policy_error": v.policy_error}


def _text(data: dict[str, Any], key: str, limit: int = TEXT_MAX) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise AdminInvalid(f"{key}: a text of at most {limit} characters")
    return value.strip() if key != "user_data" else value


def _number(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 31:
        raise AdminInvalid(f"{key}: a whole number, 0 or more")
    return value


def _texts(data: dict[str, Any], key: str) -> tuple[str, ...] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > 100 or not all(
            isinstance(v, str) and 0 < len(v.strip()) <= 512 for v in value):
        raise AdminInvalid(f"{key}: a list of texts (at most 100)")
    return tuple(v.strip() for v in value)


KNOWN = frozenset({"id", "name", "image", "kind", "vcpus", "memory_mib", "min_ready",
                   "max_size", "groups", "hosts", "image_version", "boot_timeout_s",
                   "secure_boot", "network", "user_data", "office", "policy"})


def pool_changes(data: dict[str, Any]) -> tuple[PoolChanges, object | None]:
    """The request's changes (a key left out: unchanged) and policy. Raises
    AdminInvalid naming the first value that is wrong."""
    unknown = sorted(set(data) - KNOWN)
    if unknown:
        raise AdminInvalid(f"unknown field(s): {', '.join(unknown)}")
    kind = _text(data, "kind")
    if kind is not None and kind not in {k.value for k in PoolKind}:
        raise AdminInvalid(f"kind: {' or '.join(k.value for k in PoolKind)}")
    secure = data.get("secure_boot")
    if secure is not None and not isinstance(secure, bool):
        raise AdminInvalid("secure_boot: true or false")
    version, follow = None, False
    if "image_version" in data:  # null: run the released version
        if data["image_version"] is None:
            follow = True
        else:
            version = _number(data, "image_version")
    office = _text(data, "office", 64)
    if "office" in data and data["office"] is None:
        office = "none"
    policy = data.get("policy")
    if policy is not None and not isinstance(policy, dict):
        raise AdminInvalid("policy: an object of calendar, shifts and spares")
    return PoolChanges(
        display_name=_text(data, "name", 128), image=_text(data, "image", 64),
        kind=PoolKind(kind) if kind else None, vcpus=_number(data, "vcpus"),
        memory_mib=_number(data, "memory_mib"), min_ready=_number(data, "min_ready"),
        max_size=_number(data, "max_size"), entitled_groups=_texts(data, "groups"),
        hosts=_texts(data, "hosts"), image_version=version, follow_released=follow,
        boot_timeout_s=_number(data, "boot_timeout_s"), secure_boot=secure,
        network=_text(data, "network", 80), user_data=_text(data, "user_data", USER_DATA_MAX),
        office=office), policy


async def _body(call: Call) -> dict[str, Any]:
    data = await read_json(call, POOL_BODY)
    if data is None:
        raise AdminInvalid("send a JSON object of the pool's values")
    return data


async def pools(call: Call) -> Response:
    views = await call.api.system_admin.pools()
    return JSONResponse({"pools": [pool_json(v) for v in views]})


async def pool(call: Call) -> Response:
    v = await call.api.system_admin.pool(call.request.path_params["pool"])
    return JSONResponse(pool_json(v))


async def create(call: Call) -> Response:
    """{"id", "name", "image", ...}: 201 with the pool."""
    data = await _body(call)
    pool_id = data.get("id")
    if not isinstance(pool_id, str) or not pool_id:
        raise AdminInvalid("id: the new pool's id (1-32 letters, digits or '-')")
    changes, policy = pool_changes({k: v for k, v in data.items() if k != "id"})
    v = await call.api.system_admin.save_pool(call.signed_in.principal, call.source, pool_id,
                                              changes, policy, create=True)
    return JSONResponse(pool_json(v), status_code=201)


async def change(call: Call) -> Response:
    """Only the values sent change; the pool's kind never changes by omission."""
    data = await _body(call)
    if not data:
        raise AdminInvalid("send at least one value to change")
    changes, policy = pool_changes(data)
    if "id" in data and data["id"] != call.request.path_params["pool"]:
        raise AdminInvalid("id: a pool's id cannot change")
    v = await call.api.system_admin.save_pool(
        call.signed_in.principal, call.source, call.request.path_params["pool"], changes,
        policy, create=False)
    return JSONResponse(pool_json(v))


routes: list[Route] = [
    route("/api/admin/pools", "GET", READ, pools),
    route("/api/admin/pools", "POST", CHANGE, create),
    route("/api/admin/pools/{pool}", "GET", READ, pool),
    route("/api/admin/pools/{pool}", "PATCH", CHANGE, change),
]
