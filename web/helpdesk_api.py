"""The helpdesk's JSON API (the helpdesk console uses it): find a clerk of the offices
one serves, see their desktops and the last days' events (broker.helpdesk)."""

from __future__ import annotations

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.errors import BadRequest
from broker.helpdesk import Clerk
from vdi.domain import Permission
from web.access import Access, Call, route
from web.api import read_json

READ = Access(Permission.HELPDESK)
ACT = Access(Permission.HELPDESK, csrf=True)


def _clerk(c: Clerk) -> dict[str, object]:
    return {"username": c.username, "name": c.display_name, "offices": list(c.offices)}


async def find(call: Call) -> Response:
    """?q= an account's start or a part of a name (Chinese names included)."""
    text = call.request.query_params.get("q", "")
    if not text.strip() or len(text) > 64:
        raise BadRequest("Type 1 to 64 characters of an account or a name.")
    found = await call.api.helpdesk.find(call.signed_in.principal, text, call.source)
    return JSONResponse({"clerks": [_clerk(c) for c in found]})


async def clerk(call: Call) -> Response:
    view = await call.api.helpdesk.clerk(call.signed_in.principal,
                                         call.request.path_params["username"], call.source)
    return JSONResponse({
        "clerk": _clerk(view.clerk),
        "desktops": [{"id": d.id, "pool": d.pool_id, "state": d.state.value,
                      "host": d.host_uri, "addresses": list(d.guest_addresses),
                      "created": d.created_at.isoformat()}
                     for d in view.desktops],
        "events": [{"at": e.at.isoformat(), "what": e.what, "outcome": e.outcome,
                    "source": e.source, "detail": e.detail} for e in view.events]})


async def screen(call: Call) -> Response:
    """The desktop's screen now (PNG); the console refreshes it every few seconds."""
    png = await call.api.helpdesk.screen(call.signed_in.principal,
                                         call.request.path_params["desktop_id"], call.source)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


async def act(call: Call) -> Response:
    """{"action": "reboot" | "logoff" | "reset" | "disconnect", "reason": why (recorded)}."""
    data = await read_json(call)
    if data is None or not isinstance(data.get("action"), str) or not isinstance(
            data.get("reason"), str):
        raise BadRequest("Send a JSON object with action and reason.")
    done = await call.api.helpdesk.act(call.signed_in.principal,
                                       call.request.path_params["desktop_id"],
                                       str(data["action"]), str(data["reason"]), call.source)
    return JSONResponse({"done": done})


async def message(call: Call) -> Response:
    """{"text": the message}: shown on the clerk's desktop page until acknowledged."""
    data = await read_json(call)
    if data is None or not isinstance(data.get("text"), str):
        raise BadRequest("Send a JSON object with text.")
    message_id = await call.api.helpdesk.message(
        call.signed_in.principal, call.request.path_params["desktop_id"], str(data["text"]),
        call.source)
    return JSONResponse({"message": message_id})


async def view(call: Call) -> Response:
    """{"reason": why (recorded)}: a one-time websocket path for a read-only view of
    the desktop, to be opened within `expires_in` seconds."""
    data = await read_json(call)
    if data is None or not isinstance(data.get("reason"), str):
        raise BadRequest("Send a JSON object with reason.")
    offer = await call.api.views.grant(call.signed_in, call.request.path_params["desktop_id"],
                                       str(data["reason"]))
    return JSONResponse({"desktop": offer.desktop_id, "view": f"/helpdesk/view/{offer.token}",
                         "expires_in": offer.expires_in})


routes: list[Route] = [
    route("/api/helpdesk/clerks", "GET", READ, find),
    route("/api/helpdesk/clerks/{username}", "GET", READ, clerk),
    route("/api/helpdesk/desktops/{desktop_id}/screen", "GET", READ, screen),
    route("/api/helpdesk/desktops/{desktop_id}/actions", "POST", ACT, act),
    route("/api/helpdesk/desktops/{desktop_id}/messages", "POST", ACT, message),
    # a view opens in the helpdesk console's browser: never for a script's API token
    route("/api/helpdesk/desktops/{desktop_id}/view", "POST",
          Access(Permission.HELPDESK, csrf=True, bearer=False), view),
]
