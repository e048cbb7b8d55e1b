"""Request checks shared by the routes: session cookie, CSRF header, Origin, client address."""

from __future__ import annotations

import secrets

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from broker.sessions import WebSession
from vdi.settings import Settings
from web.services import Services


def cookie_name(settings: Settings) -> str:
    # The __Host- prefix needs Secure, and browsers only keep Secure cookies over https.
    return "__Host-vdi_session" if settings.secure_cookies else "vdi_session"


def set_session_cookie(response: Response, settings: Settings, value: str) -> None:
    response.set_cookie(cookie_name(settings), value, max_age=settings.session_absolute_s,
                        path="/", secure=settings.secure_cookies, httponly=True,
                        samesite="strict")


def clear_session_cookie(response: Response, settings: Settings) -> None:
    response.delete_cookie(cookie_name(settings), path="/", secure=settings.secure_cookies,
                           httponly=True, samesite="strict")


def services(conn: HTTPConnection) -> Services:
    svc: Services = conn.app.state.services
    return svc


async def current_session(conn: HTTPConnection) -> WebSession | None:
    svc = services(conn)
    raw = conn.cookies.get(cookie_name(svc.settings))
    if not raw:
        return None
    return await svc.db_call(svc.sessions.get, raw)


def origin_allowed(conn: HTTPConnection, settings: Settings) -> bool:
    """Allow-list check of the Origin header; a missing Origin is refused."""
    origin = conn.headers.get("origin")
    return origin is not None and origin.rstrip("/") in settings.origins


def csrf_ok(request: Request, session: WebSession) -> bool:
    sent = request.headers.get("x-csrf-token", "")
    return bool(sent) and secrets.compare_digest(sent, session.csrf)


def client_address(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"
