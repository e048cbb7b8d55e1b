"""Personal API tokens (broker.api_tokens): one's own (make, list, revoke) and, for the
security administrator, everyone's. A token is made in the console only: a request that
comes with a token cannot make another."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.api_token_store import ApiToken
from broker.errors import BadRequest
from vdi.domain import Permission, utc_now
from web.access import Access, Call, route
from web.api import id_param, read_json

MINE = Access(Permission.API_TOKENS)
# a new credential: the directory confirms its owner now, and a browser asks for it
CREATE = Access(Permission.API_TOKENS, csrf=True, fresh=True, bearer=False)
REVOKE = Access(Permission.API_TOKENS, csrf=True)
EVERYONE = Access(Permission.MANAGE_SESSIONS)
REVOKE_ANY = Access(Permission.MANAGE_SESSIONS, csrf=True, fresh=True, bearer=False)
NO_STORE = {"Cache-Control": "no-store"}


def token_json(t: ApiToken, now: datetime, *, owner: bool = False) -> dict[str, Any]:
    """A token as the API shows it: never its secret, nor its hash (the fingerprint is
    the hash's first characters)."""
    body: dict[str, Any] = {
        "id": t.id, "name": t.name, "fingerprint": t.fingerprint, "state": t.state(now),
        "created_at": t.created_at.isoformat(), "expires_at": t.expires_at.isoformat(),
        "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
        "last_used_from": t.last_used_from}
    if owner:
        body.update(username=t.username, display_name=t.principal.display_name)
    return body


async def mine(call: Call) -> Response:
    tokens = await call.api.api_tokens.mine(call.signed_in.principal)
    now = utc_now()
    return JSONResponse({"tokens": [token_json(t, now) for t in tokens],
                         "max_days": call.api.api_tokens.max_days}, headers=NO_STORE)


async def create(call: Call) -> Response:
    """{"name": ..., "days": 1..max_days}: 201 with the secret, shown this once."""
    data = await read_json(call)
    days = data.get("days") if data is not None else None
    if data is None or not isinstance(data.get("name"), str) or not isinstance(days, int) \
            or isinstance(days, bool):
        raise BadRequest("Send a JSON object with name and days.")
    made = await call.api.api_tokens.create(call.signed_in.principal, str(data["name"]),
                                            days, call.source)
    return JSONResponse({"token": token_json(made.token, utc_now()), "secret": made.secret},
                        status_code=201, headers=NO_STORE)


async def revoke(call: Call) -> Response:
    t = await call.api.api_tokens.revoke_own(call.signed_in.principal,
                                             id_param(call, "token_id"), call.source)
    return JSONResponse({"revoked": token_json(t, utc_now())})


async def everyone(call: Call) -> Response:
    tokens = await call.api.api_tokens.everyone(call.signed_in.principal, call.source)
    now = utc_now()
    return JSONResponse({"tokens": [token_json(t, now, owner=True) for t in tokens]})


async def revoke_any(call: Call) -> Response:
    """{"reason": why (recorded)}."""
    data = await read_json(call)
    if data is None or not isinstance(data.get("reason"), str):
        raise BadRequest("Send a JSON object with reason.")
    t = await call.api.api_tokens.revoke_any(call.signed_in.principal,
                                             id_param(call, "token_id"), str(data["reason"]),
                                             call.source)
    return JSONResponse({"revoked": token_json(t, utc_now(), owner=True)})


routes: list[Route] = [
    route("/api/tokens", "GET", MINE, mine),
    route("/api/tokens", "POST", CREATE, create),
    route("/api/tokens/{token_id}", "DELETE", REVOKE, revoke),
    route("/api/security/tokens", "GET", EVERYONE, everyone),
    route("/api/security/tokens/{token_id}/revoke", "POST", REVOKE_ANY, revoke_any),
]
