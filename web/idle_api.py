"""The idle policy in the JSON API: the desktop's status for its page, the clerk's
"I'm still here", and the reclaims for admins and the helpdesk."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.roles import entitled
from vdi.domain import Role
from vdi.models import ReclaimRow
from web.api import error
from web.security import client_address, csrf_ok, current_session, services

MAX_RECLAIMS = 500
MAX_HOURS = 90 * 24


def iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


async def _entitled_pool(request: Request) -> tuple[Any, Response | None]:
    session = await current_session(request)
    if session is None:
        return None, error(request, 401, "not_signed_in", "Please sign in.")
    svc = services(request)
    pool = await svc.db_call(svc.catalog.pool, request.path_params["pool"])
    if pool is None or not entitled(pool, session.principal.groups):
        return None, error(request, 404, "pool_not_found",
                           "No such desktop pool for your account.")
    return session, None


async def desktop_status(request: Request) -> Response:
    """The page's view of its desktop: an idle warning to count down, or why the
    desktop went away. `now` lets the page correct its own clock."""
    session, refused = await _entitled_pool(request)
    if refused is not None:
        return refused
    svc = services(request)
    st = await svc.db_call(svc.notices.status, session.principal.username,
                           request.path_params["pool"])
    now = svc.clock()
    warning = None
    if st.warning is not None:
        warning = {"warned_at": iso(st.warning.warned_at),
                   "deadline": iso(st.warning.deadline),
                   "seconds_left": max(0, int((st.warning.deadline - now).total_seconds()))}
    return JSONResponse({"now": iso(now), "desktop": st.desktop_id,
                         "power": st.power.value if st.power else None,
                         "warning": warning,
                         "notice": st.notice.as_json() if st.notice else None})


async def still_here(request: Request) -> Response:
    session, refused = await _entitled_pool(request)
    if refused is not None:
        return refused
    if not csrf_ok(request, session):
        return error(request, 403, "csrf", "The request lacks a valid CSRF token.")
    svc = services(request)
    kept = await svc.db_call(svc.notices.still_here, session.principal.username,
                             request.path_params["pool"])
    if not kept:
        return error(request, 404, "no_desktop", "You have no desktop in this pool.")
    return JSONResponse({"ok": True})


async def reclaims(request: Request) -> Response:
    """Recent reclaims, newest first (admins and the helpdesk): ?pool=, ?user=,
    ?hours= (default 24)."""
    session = await current_session(request)
    if session is None:
        return error(request, 401, "not_signed_in", "Please sign in.")
    if not session.principal.roles & {Role.ADMIN, Role.HELPDESK}:
        return error(request, 403, "forbidden", "This needs the admin or helpdesk role.")
    svc = services(request)
    try:
        hours = float(request.query_params.get("hours", "24"))
    except ValueError:
        hours = -1.0
    if not 0 < hours <= MAX_HOURS:  # also NaN and infinity
        return error(request, 400, "bad_request", "hours must be a number.")
    pool = request.query_params.get("pool")
    user = request.query_params.get("user")

    def read() -> list[dict[str, Any]]:
        q = select(ReclaimRow).where(ReclaimRow.at >= svc.clock() - timedelta(hours=hours))
        if pool:
            q = q.where(ReclaimRow.pool_id == pool)
        if user:
            q = q.where(ReclaimRow.username == user)
        with svc.db() as s:
            return [{"at": iso(r.at), "desktop": r.desktop_id, "pool": r.pool_id,
                     "user": r.username, "action": r.action, "cause": r.cause,
                     "since": iso(r.since), "shift": r.shift, "reason": r.reason,
                     "seen_at": iso(r.seen_at)}
                    for r in s.scalars(q.order_by(ReclaimRow.at.desc()).limit(MAX_RECLAIMS))]

    found = await svc.db_call(read)
    roles = ",".join(sorted(r.value for r in session.principal.roles))
    # who looked at whose history is itself on record
    await svc.db_call(lambda: svc.audit.record(
        actor=session.principal.username, role=roles, action="reclaims-read",
        target=f"pool={pool or '*'} user={user or '*'}", source=client_address(request),
        outcome="ok", detail=f"{len(found)} record(s), {hours:g} h"))
    return JSONResponse({"reclaims": found})


routes = [
    Route("/api/pools/{pool}/status", desktop_status, methods=["GET"]),
    Route("/api/pools/{pool}/still-here", still_here, methods=["POST"]),
    Route("/api/admin/reclaims", reclaims, methods=["GET"]),
]
