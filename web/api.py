"""The JSON API (the browser pages use it too)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.assignment import (
    AssignmentError,
    DesktopNotReady,
    HostsUnavailable,
    NoCapacity,
    NotEntitled,
    NothingToLogOff,
    PoolFull,
    PoolNotFound,
)
from broker.auth.directory import DirectoryUnavailable, InvalidCredentials
from broker.auth.throttle import Throttled
from broker.roles import entitled, roles_for
from broker.sessions import WebSession
from vdi.domain import Desktop, Principal
from vdi.models import AuditRow
from web.i18n import gettext_for
from web.security import (
    clear_session_cookie,
    client_address,
    cookie_name,
    csrf_ok,
    current_session,
    origin_allowed,
    services,
    set_session_cookie,
)

log = logging.getLogger(__name__)
MAX_BODY = 4096


def error(request: Request, status: int, code: str, message: str,
          headers: dict[str, str] | None = None) -> JSONResponse:
    _ = gettext_for(request).gettext
    return JSONResponse({"error": code, "message": _(message)}, status_code=status,
                        headers=headers)


def session_body(session: WebSession) -> dict[str, Any]:
    p = session.principal
    return {"user": {"username": p.username, "display_name": p.display_name},
            "roles": sorted(r.value for r in p.roles), "csrf": session.csrf}


async def read_json(request: Request) -> dict[str, Any] | None:
    """The body as a JSON object, or None: malformed, not an object, or over MAX_BODY
    (read no further than that, whatever Content-Length claims)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return None
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


async def login(request: Request) -> Response:
    svc = services(request)
    source = client_address(request)
    if not origin_allowed(request, svc.settings):
        return error(request, 403, "bad_origin", "This page may not sign in here.")
    data = await read_json(request)
    if data is None:
        return error(request, 400, "bad_request", "Send a JSON object with username and password.")
    username, password = data.get("username"), data.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        return error(request, 400, "bad_request", "Send a JSON object with username and password.")
    username = username.strip()
    try:  # counted before the directory is asked, on every broker (broker.auth.throttle)
        attempt = await svc.db_call(svc.throttle.reserve, username, source)
    except Throttled as e:
        await svc.db_call(lambda: svc.audit.record(
            actor=username[:128] or "-", role="-", action="login", target="-", source=source,
            outcome="throttled"))
        return error(request, 429, "too_many_attempts",
                     "Too many failed sign-ins. Wait a few minutes and try again.",
                     headers={"Retry-After": str(e.retry_after_s)})
    try:
        user = await svc.authenticate(username, password)
    except InvalidCredentials:
        attempt.failed()
        await svc.db_call(lambda: svc.audit.record(
            actor=username[:128] or "-", role="-", action="login", target="-", source=source,
            outcome="denied"))
        return error(request, 401, "invalid_credentials", "Wrong username or password.")
    except DirectoryUnavailable as e:
        await svc.db_call(attempt.cancel)
        log.warning("login: directory unavailable: %s", e)
        await svc.db_call(lambda: svc.audit.record(
            actor=username[:128], role="-", action="login", target="-", source=source,
            outcome="directory_unavailable"))
        return error(request, 503, "directory_unavailable",
                     "The directory is unavailable. Try again shortly or call the helpdesk.")
    await svc.db_call(attempt.succeeded, user.username)
    roles = roles_for(user.groups, svc.settings.role_map)
    principal = Principal(username=user.username, display_name=user.display_name,
                          roles=roles, groups=user.groups)
    entry = svc.audit.row(actor=user.username, role=",".join(sorted(r.value for r in roles))
                          or "-", action="login", target="-", source=source, outcome="ok")

    def open_session() -> tuple[str, WebSession] | None:
        # one trip to a database thread: the access check and the new session
        pools = svc.catalog.pools()
        if not roles and not any(entitled(p, user.groups) for p in pools):
            return None
        return svc.sessions.create(principal, source, audit=entry)

    opened = await svc.db_call(open_session)
    if opened is None:
        await svc.db_call(lambda: svc.audit.record(
            actor=user.username, role="-", action="login", target="-", source=source,
            outcome="no_access"))
        return error(request, 403, "no_access",
                     "Your account has no access to this service. Call the helpdesk.")
    svc.audit.written(entry)
    raw, session = opened
    response = JSONResponse(session_body(session))
    set_session_cookie(response, svc.settings, raw)
    return response


async def whoami(request: Request) -> Response:
    session = await current_session(request)
    if session is None:
        return error(request, 401, "not_signed_in", "Please sign in.")
    return JSONResponse(session_body(session))


async def logout(request: Request) -> Response:
    svc = services(request)
    session = await current_session(request)
    if session is None:
        response = error(request, 401, "not_signed_in", "Please sign in.")
        clear_session_cookie(response, svc.settings)
        return response
    if not csrf_ok(request, session):
        return error(request, 403, "csrf", "The request lacks a valid CSRF token.")
    await svc.db_call(svc.sessions.end, session.id_hash)
    await svc.db_call(svc.tokens.revoke_session, session.id_hash)
    closed = svc.tunnels.close_session(session.id_hash)
    await svc.db_call(lambda: svc.audit.record(
        actor=session.principal.username, role=_roles(session), action="logout", target="-",
        source=client_address(request), outcome="ok", detail=f"tunnels closed: {closed}"))
    response = JSONResponse({"ok": True})
    clear_session_cookie(response, svc.settings)
    return response


async def list_pools(request: Request) -> Response:
    svc = services(request)
    raw = request.cookies.get(cookie_name(svc.settings))

    def read() -> list[dict[str, Any]] | None:
        # one trip to a database thread: the session, then the pools with their desktops
        session = svc.sessions.get(raw)
        if session is None:
            return None
        pools = svc.assigner.overview(session.principal)
        # why a desktop went away while the clerk was gone (the idle policy)
        notices = svc.notices.notices(session.principal.username, [p.id for p, _ in pools])
        return [{"id": p.id, "name": p.display_name, "kind": p.kind.value, "protocol": "vnc",
                 "desktop": current.id if current else None,
                 "notice": n.as_json() if (n := notices.get(p.id)) else None}
                for p, current in pools]

    mine = await svc.db_call(read) if raw else None
    if mine is None:
        return error(request, 401, "not_signed_in", "Please sign in.")
    return JSONResponse({"pools": mine})


@dataclass(frozen=True)
class _Connected:
    desktop: Desktop
    token: str
    audit: AuditRow


async def connect(request: Request) -> Response:
    svc = services(request)
    raw = request.cookies.get(cookie_name(svc.settings))
    pool_id = request.path_params["pool"]
    source = client_address(request)

    def attempt() -> tuple[WebSession | None, _Connected | AssignmentError | None]:
        """One trip to a database thread: session, CSRF check, assignment, token. An
        AssignmentError comes back as the result; None means the CSRF check failed."""
        session = svc.sessions.get(raw)
        if session is None:
            return None, None
        if not csrf_ok(request, session):  # reads only the request's headers
            return session, None
        try:
            desktop = svc.assigner.assign(pool_id, session.principal)
        except AssignmentError as e:
            return session, e
        if svc.notices.notices(session.principal.username, [pool_id]):
            with svc.db.begin() as s:  # the clerk is back: the reclaim is old news
                svc.notices.mark_seen(s, session.principal.username, pool_id, svc.clock())
        entry = svc.audit.row(actor=session.principal.username, role=_roles(session),
                              action="connect", target=desktop.id, source=source, outcome="ok")
        token = svc.tokens.issue(username=session.principal.username,
                                 session_hash=session.id_hash, desktop_id=desktop.id,
                                 audit=entry)
        return session, _Connected(desktop, token, entry)

    session, outcome = await svc.db_call(attempt) if raw else (None, None)
    if session is None:
        return error(request, 401, "not_signed_in", "Please sign in.")
    if outcome is None:
        return error(request, 403, "csrf", "The request lacks a valid CSRF token.")
    who = session.principal
    if isinstance(outcome, _Connected):
        svc.worker.wake.set()  # a spare was taken: let the worker top the pool up
        svc.audit.written(outcome.audit)
        return JSONResponse({"desktop": outcome.desktop.id, "protocol": "vnc",
                             "console": f"/console/{outcome.token}",
                             "expires_in": svc.tokens.ttl_s})
    try:
        raise outcome
    except (PoolNotFound, NotEntitled) as e:
        why = e.code
        await svc.db_call(lambda: svc.audit.record(
            actor=who.username, role=_roles(session), action="connect", target=pool_id,
            source=source, outcome="denied", detail=why))
        return error(request, 404, "pool_not_found", "No such desktop pool for your account.")
    except DesktopNotReady:
        svc.worker.wake.set()
        return error(request, 503, "desktop_starting",
                     "A desktop is being prepared for you. This takes a few seconds.",
                     headers={"Retry-After": "2"})
    except HostsUnavailable:
        svc.worker.wake.set()
        await svc.db_call(lambda: svc.audit.record(
            actor=who.username, role=_roles(session), action="connect", target=pool_id,
            source=source, outcome="host_unavailable"))
        return error(request, 503, "host_unavailable",
                     "The desktop servers are not answering. Try again shortly or call "
                     "the helpdesk.", headers={"Retry-After": "10"})
    except NoCapacity:
        await svc.db_call(lambda: svc.audit.record(
            actor=who.username, role=_roles(session), action="connect", target=pool_id,
            source=source, outcome="no_capacity"))
        return error(request, 503, "no_capacity",
                     "The desktop servers are full. Try again later or call the helpdesk.",
                     headers={"Retry-After": "30"})
    except PoolFull:
        await svc.db_call(lambda: svc.audit.record(
            actor=who.username, role=_roles(session), action="connect", target=pool_id,
            source=source, outcome="pool_full"))
        return error(request, 409, "pool_full",
                     "No desktop is free in this pool. Try again later or call the helpdesk.")
    except AssignmentError:
        log.exception("assignment failed")
        return error(request, 500, "assignment_failed", "Could not assign a desktop.")


async def log_off(request: Request) -> Response:
    """The clerk is done with their desktop in this pool. Floating: it goes back to the
    pool through a fresh clone of the image. Dedicated: it stays theirs, untouched."""
    svc = services(request)
    session = await current_session(request)
    if session is None:
        return error(request, 401, "not_signed_in", "Please sign in.")
    if not csrf_ok(request, session):
        return error(request, 403, "csrf", "The request lacks a valid CSRF token.")
    pool_id = request.path_params["pool"]
    who = session.principal
    pool = await svc.db_call(svc.catalog.pool, pool_id)
    if pool is None or not entitled(pool, who.groups):
        return error(request, 404, "pool_not_found", "No such desktop pool for your account.")
    try:
        done = await svc.db_call(svc.assigner.log_off, pool_id, who.username)
    except (PoolNotFound, NothingToLogOff):
        return error(request, 404, "no_desktop", "You have no desktop in this pool.")
    closed = 0
    for tunnel in svc.tunnels.open_for(desktop_id=done.desktop.id, username=who.username):
        tunnel.close()
        closed += 1
    if done.reverted:
        svc.worker.wake.set()
    await svc.db_call(lambda: svc.audit.record(
        actor=who.username, role=_roles(session), action="logoff", target=done.desktop.id,
        source=client_address(request), outcome="ok",
        detail=f"{'reverted to the image' if done.reverted else 'kept (dedicated)'}; "
               f"tunnels closed: {closed}"))
    return JSONResponse({"desktop": done.desktop.id, "reverted": done.reverted})


async def healthz(request: Request) -> Response:
    svc = services(request)
    def ping() -> None:
        with svc.db() as s:
            s.execute(text("SELECT 1"))

    try:
        await svc.db_call(ping)
    except SQLAlchemyError as e:  # report the database as down
        return JSONResponse({"status": "error", "database": str(e)[:200]}, status_code=503)
    return JSONResponse({"status": "ok"})


def _roles(session: WebSession) -> str:
    return ",".join(sorted(r.value for r in session.principal.roles)) or "-"


routes = [
    Route("/api/session", login, methods=["POST"]),
    Route("/api/session", whoami, methods=["GET"]),
    Route("/api/session", logout, methods=["DELETE"]),
    Route("/api/pools", list_pools, methods=["GET"]),
    Route("/api/pools/{pool}/connect", connect, methods=["POST"]),
    Route("/api/pools/{pool}/logoff", log_off, methods=["POST"]),
    Route("/healthz", healthz, methods=["GET"]),
]
