"""The clerk's JSON API (the browser pages use it too). Each route parses, calls one use
case, and renders; access is declared beside each route (web.access)."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.api import DatabaseDown
from broker.errors import BadRequest
from broker.sessions import WebSession
from vdi.domain import Permission
from web.access import (
    CHANGE,
    PUBLIC,
    READ,
    Access,
    Call,
    clear_session_cookie,
    route,
    set_session_cookie,
)

MAX_BODY = 4096
LOGIN = Access(None, origin=True, bearer=False)
# a console is granted only to a user the directory confirms now, and only to a browser
# (the websocket needs the session cookie)
GRANT = Access(Permission.SIGNED_IN, csrf=True, fresh=True, bearer=False)
# signing out ends a browser's session: an API token is revoked instead (/api/tokens)
LOGOUT = Access(Permission.SIGNED_IN, csrf=True, bearer=False)


def session_body(session: WebSession) -> dict[str, Any]:
    p = session.principal
    return {"user": {"username": p.username, "display_name": p.display_name},
            "roles": sorted(r.value for r in p.roles), "csrf": session.csrf}


def id_param(call: Call, name: str) -> int:
    """A path parameter that is a record's number: 1 to 12 ASCII digits (not any
    character Unicode calls a digit, such as "³", which int() refuses). Raises
    BadRequest."""
    raw = call.request.path_params[name]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise BadRequest("The request is malformed.")
    return int(raw)


async def read_json(call: Call, max_body: int = MAX_BODY) -> dict[str, Any] | None:
    """The body as a JSON object, or None: malformed, not an object, or over `max_body`
    bytes (read no further than that, whatever Content-Length claims)."""
    body = bytearray()
    async for chunk in call.request.stream():
        body += chunk
        if len(body) > max_body:
            return None
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


async def login(call: Call) -> Response:
    data = await read_json(call)
    username = data.get("username") if data is not None else None
    password = data.get("password") if data is not None else None
    if not isinstance(username, str) or not isinstance(password, str):
        raise BadRequest("Send a JSON object with username and password.")
    signed_in = await call.api.signin.sign_in(username, password, call.source)
    response = JSONResponse(session_body(signed_in.session))
    set_session_cookie(response, call.settings, signed_in.cookie)
    return response


async def whoami(call: Call) -> Response:
    if call.token is not None:  # the token's owner: no CSRF token to give
        t = call.token
        body = session_body(call.signed_in)
        del body["csrf"]
        return JSONResponse({**body, "token": {
            "id": t.id, "name": t.name, "fingerprint": t.fingerprint,
            "expires_at": t.expires_at.isoformat()}})
    return JSONResponse(session_body(call.signed_in))


async def logout(call: Call) -> Response:
    await call.api.signin.sign_out(call.signed_in, call.source)
    response = JSONResponse({"ok": True})
    clear_session_cookie(response, call.settings)
    return response


async def list_pools(call: Call) -> Response:
    views = await call.api.portal.pools(call.signed_in)
    return JSONResponse({"pools": [
        {"id": v.pool.id, "name": v.pool.display_name, "kind": v.pool.kind.value,
         "protocol": v.console.value, "desktop": v.desktop_id,
         "notice": v.notice.as_json() if v.notice else None} for v in views]})


async def connect(call: Call) -> Response:
    offer = await call.api.consoles.grant(call.signed_in, call.request.path_params["pool"],
                                          call.source)
    return JSONResponse({"desktop": offer.desktop_id, "protocol": offer.kind.value,
                         "console": f"/console/{offer.token}", "expires_in": offer.expires_in})


async def log_off(call: Call) -> Response:
    done = await call.api.portal.log_off(call.signed_in, call.request.path_params["pool"],
                                         call.source)
    return JSONResponse({"desktop": done.desktop_id, "reverted": done.reverted})


async def healthz(call: Call) -> Response:
    try:
        await call.api.health.check()
    except DatabaseDown as e:  # report the database as down
        return JSONResponse({"status": "error", "database": str(e)}, status_code=503)
    return JSONResponse({"status": "ok"})


routes: list[Route] = [
    route("/api/session", "POST", LOGIN, login),
    route("/api/session", "GET", READ, whoami),
    route("/api/session", "DELETE", LOGOUT, logout),
    route("/api/pools", "GET", READ, list_pools),
    route("/api/pools/{pool}/connect", "POST", GRANT, connect),
    route("/api/pools/{pool}/logoff", "POST", CHANGE, log_off),
    route("/healthz", "GET", PUBLIC, healthz),
]
