"""The security administrator's JSON API: the live sessions, and ending one with a
reason (broker.security_admin)."""

from __future__ import annotations

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.errors import BadRequest
from vdi.domain import Permission
from web.access import Access, Call, route
from web.api import read_json

READ = Access(Permission.MANAGE_SESSIONS)
CHANGE = Access(Permission.MANAGE_SESSIONS, csrf=True, fresh=True)


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


routes: list[Route] = [
    route("/api/security/sessions", "GET", READ, sessions),
    route("/api/security/sessions/{handle}/end", "POST", CHANGE, end),
]
