"""The idle policy in the JSON API: the desktop's status for its page, the clerk's
"I'm still here", and the reclaims for admins and the helpdesk."""

from __future__ import annotations

from datetime import datetime

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.reclaims import parse_hours
from vdi.domain import Permission
from web.access import CHANGE, READ, Access, Call, route
from web.api import id_param


def iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


async def desktop_status(call: Call) -> Response:
    """The page's view of its desktop: an idle warning to count down, or why the
    desktop went away; the helpdesk's message, who of the helpdesk is viewing it, and
    whether the helpdesk disconnected the clerk. `now` lets the page correct its own
    clock."""
    page = await call.api.portal.status(call.signed_in, call.request.path_params["pool"])
    st, message, gone = page.desktop, page.message, page.disconnected
    now = call.api.portal.clock()
    warning = None
    if st.warning is not None:
        warning = {"warned_at": iso(st.warning.warned_at),
                   "deadline": iso(st.warning.deadline),
                   "seconds_left": max(0, int((st.warning.deadline - now).total_seconds()))}
    return JSONResponse({"now": iso(now), "desktop": st.desktop_id,
                         "power": st.power.value if st.power else None,
                         "warning": warning,
                         "notice": st.notice.as_json() if st.notice else None,
                         "message": {"id": message.id, "from": message.sender_name,
                                     "text": message.text, "at": iso(message.at)}
                         if message else None,
                         "viewers": [{"name": name} for name in page.viewers],
                         "disconnected": {"by": gone.by_name, "at": iso(gone.at)}
                         if gone else None})


async def still_here(call: Call) -> Response:
    await call.api.portal.still_here(call.signed_in, call.request.path_params["pool"])
    return JSONResponse({"ok": True})


async def reclaims(call: Call) -> Response:
    """Recent reclaims, newest first: ?pool=, ?user=, ?hours= (default 24)."""
    q = call.request.query_params
    found = await call.api.reclaims.read(
        call.signed_in.principal, hours=parse_hours(q.get("hours")), pool=q.get("pool"),
        user=q.get("user"), source=call.source)
    return JSONResponse({"reclaims": [
        {"at": iso(r.at), "desktop": r.desktop_id, "pool": r.pool_id, "user": r.username,
         "action": r.action, "cause": r.cause, "since": iso(r.since), "shift": r.shift,
         "reason": r.reason, "seen_at": iso(r.seen_at)} for r in found]})


async def message_seen(call: Call) -> Response:
    await call.api.portal.message_seen(call.signed_in, call.request.path_params["pool"],
                                       id_param(call, "message_id"))
    return JSONResponse({"ok": True})


routes: list[Route] = [
    route("/api/pools/{pool}/status", "GET", READ, desktop_status),
    route("/api/pools/{pool}/still-here", "POST", CHANGE, still_here),
    route("/api/pools/{pool}/messages/{message_id}/seen", "POST", CHANGE, message_seen),
    route("/api/admin/reclaims", "GET", Access(Permission.READ_RECLAIMS), reclaims),
]
