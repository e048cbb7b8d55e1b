"""The security administrator's JSON API: the live sessions, and ending one with a
reason (broker.security_admin)."""

from __future__ import annotations

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.access_policy import PolicyRecord
from broker.errors import BadRequest
from vdi.domain import Permission
from web.access import Access, Call, route
from web.api import read_json

READ = Access(Permission.MANAGE_SESSIONS)
POLICY_BODY = 256 * 1024
# ending a session and changing the policy: signed in, never with a script's API token
CHANGE = Access(Permission.MANAGE_SESSIONS, csrf=True, fresh=True, bearer=False)


async def sessions(call: Call) -> Response:
    views = await call.api.security.sessions(call.signed_in.principal, call.source)
    return JSONResponse({"sessions": [
        {"handle": v.session.handle, "username": v.session.username,
         "name": v.session.display_name, "roles": list(v.session.roles),
         "source": v.session.source, "since": v.session.created_at.isoformat(),
         "last_seen": v.session.last_seen_at.isoformat(), "desktops": list(v.desktops)}
        for v in views]})


async def end(call: Call) -> Response:
    """{"reason": why (recorded)}."""
    data = await read_json(call)
    if data is None or not isinstance(data.get("reason"), str):
        raise BadRequest("Send a JSON object with reason.")
    user = await call.api.security.end(call.signed_in.principal,
                                       call.request.path_params["handle"],
                                       str(data["reason"]), call.source)
    return JSONResponse({"ended": user})


def policy_json(record: PolicyRecord, defaults: dict[str, object] | None = None
                ) -> dict[str, object]:
    return {"policy": record.policy.to_json(), "version": record.version,
            "updated_at": record.updated_at.isoformat() if record.updated_at else None,
            "updated_by": record.updated_by,
            **({"defaults": defaults} if defaults is not None else {})}


async def read_policy(call: Call) -> Response:
    """The access policy, its version (send it back with a change) and the settings
    that apply where it says nothing."""
    record, defaults = await call.api.policy.read()
    return JSONResponse(policy_json(record, defaults))


async def change_policy(call: Call) -> Response:
    """{"policy": {...}, "version": the version read, "reason": why (recorded)}. Up to
    POLICY_BODY bytes: 64 networks and 5 x 50 group DNs of up to 512 characters fit."""
    data = await read_json(call, POLICY_BODY)
    if data is None or not isinstance(data.get("policy"), dict) or not isinstance(
            data.get("reason"), str) or not isinstance(data.get("version"), int) or \
            isinstance(data.get("version"), bool):
        raise BadRequest("Send a JSON object with policy, version and reason.")
    record = await call.api.policy.change(call.signed_in.principal, data["policy"],
                                          data["version"], str(data["reason"]), call.source)
    return JSONResponse(policy_json(record))


routes: list[Route] = [
    route("/api/security/sessions", "GET", READ, sessions),
    route("/api/security/sessions/{handle}/end", "POST", CHANGE, end),
    route("/api/security/policy", "GET", READ, read_policy),
    route("/api/security/policy", "PUT", CHANGE, change_policy),
]
