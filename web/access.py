"""The one access seam: every route declares what it needs next to its definition, and
this module checks it once per request -- the session cookie becomes a principal, the
permission is checked against broker.access, CSRF and Origin are verified by the
functions here (the websocket route calls origin_allowed itself, before it accepts) --
then maps the use case's refusals through web.errors."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import HTTPConnection, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from broker.access import allows
from broker.access_policy import AccessPolicy, NetworkRefused
from broker.api import BrokerApi
from broker.api_token_store import ApiToken
from broker.errors import BrokerError, Forbidden, NotSignedIn
from broker.sessions import WebSession
from vdi.domain import Permission
from vdi.settings import Settings
from web.errors import ANSWERS, error_response


class CsrfFailed(BrokerError):
    code = "csrf"


class BadOrigin(BrokerError):
    code = "bad_origin"


class BearerNotHere(BrokerError):
    """An API token sent to a page, or to a route that needs the signed-in browser."""

    code = "bearer_not_here"


# what a use case may raise to refuse: answered through web.errors' table; anything
# else is a defect and reaches Starlette's 500 with its traceback in the log
REFUSALS: tuple[type[Exception], ...] = (BrokerError, *ANSWERS)


@dataclass(frozen=True)
class Access:
    """What a route needs. `permission` None: anyone (the handler may still look for a
    session). `csrf`: a state change, the session's token must come in X-CSRF-Token.
    `origin`: the Origin header must be on the allow-list (sign-in, websockets).
    `redirect`: a page sends the signed-out browser there instead of a JSON 401.
    `fresh`: the directory confirms the user now (or did seconds ago), not only every
    few minutes. `bearer`: a personal API token (`Authorization: Bearer`) may stand in
    for the session cookie, and then no CSRF token is needed (a page of another origin
    cannot set that header); never on a page, whatever this says."""

    permission: Permission | None
    csrf: bool = False
    origin: bool = False
    redirect: str | None = None
    fresh: bool = False
    bearer: bool = True


PUBLIC = Access(None)
READ = Access(Permission.SIGNED_IN)
CHANGE = Access(Permission.SIGNED_IN, csrf=True)


@dataclass(frozen=True)
class Call:
    """A request that passed its route's checks."""

    request: Request
    api: BrokerApi
    settings: Settings
    session: WebSession | None  # set whenever the route needs a permission
    source: str
    token: ApiToken | None = None  # the API token the request came with, if it did

    @property
    def signed_in(self) -> WebSession:
        assert self.session is not None, "the route declares no permission"
        return self.session


Handler = Callable[[Call], Awaitable[Response]]


def route(path: str, method: str, access: Access, handler: Handler) -> Route:
    """A Starlette route whose endpoint runs `handler` after the checks of `access`."""

    async def endpoint(request: Request) -> Response:
        try:
            call = await admit(request, access)
            return await handler(call)
        except NotSignedIn:
            if access.redirect is not None:
                return RedirectResponse(access.redirect, status_code=303)
            return _clear_cookie(error_response(request, NotSignedIn()), request)
        except (Forbidden, NetworkRefused) as e:
            # a page the role does not open, or not from here: back to one's start page
            if access.redirect is not None:
                return RedirectResponse(access.redirect, status_code=303)
            return error_response(request, e)
        except REFUSALS as e:
            return error_response(request, e)

    endpoint.__name__ = handler.__name__
    endpoint.access = access  # type: ignore[attr-defined]  # read by the route table test
    return Route(path, endpoint, methods=[method])


async def admit(request: Request, access: Access) -> Call:
    """Run the checks of `access`. Raises BadOrigin, NotSignedIn, Forbidden, CsrfFailed."""
    api, settings = broker_api(request), app_settings(request)
    secret = bearer_secret(request)
    if secret is not None and (not access.bearer or not is_api_path(request.url.path)):
        raise BearerNotHere()
    if access.origin and not origin_allowed(request, settings):
        raise BadOrigin()
    session = None
    source = client_address(request)
    # read again every few seconds at most, for every request: sign-in maps roles with it
    policy = await api.policy.current()
    if secret is not None and access.permission is not None:
        # the token alone: a cookie sent beside it is not looked at (nor its CSRF token)
        use = await api.api_tokens.authenticate(secret, source, fresh=access.fresh)
        if not allows(use.session.principal, access.permission):
            raise Forbidden(access.permission.value)
        # tokens are for administrators and the helpdesk: every route, their networks
        await _check_network(api, policy, use.session, request.url.path, source,
                             always=True)
        return Call(request, api, settings, use.session, source, use.token)
    if access.permission is not None:
        session = await api.signin.session(request.cookies.get(cookie_name(settings)))
        if session is None:
            raise NotSignedIn()
        if not allows(session.principal, access.permission):
            raise Forbidden(access.permission.value)
        await _check_network(api, policy, session, request.url.path, source,
                             always=access.permission is not Permission.SIGNED_IN)
        if access.csrf and not csrf_ok(request, session):
            raise CsrfFailed()
        if access.fresh:  # only for a request that passed every other check
            session = await api.signin.confirmed(session)
            if session is None:
                raise NotSignedIn()
            if not allows(session.principal, access.permission):
                raise Forbidden(access.permission.value)
    return Call(request, api, settings, session, source)


async def _check_network(api: BrokerApi, policy: AccessPolicy, session: WebSession,
                         path: str, source: str, *, always: bool) -> None:
    """Administrator and helpdesk routes (`always`) only from the access policy's admin
    networks (a refusal is recorded); a clerk's routes from anywhere."""
    if always and not policy.admits(source):
        await api.policy.refused(session.principal, path, source)
        raise NetworkRefused()


def bearer_secret(conn: HTTPConnection) -> str | None:
    """The secret of an `Authorization: Bearer` header ("" when it is blank), or None
    when there is no such header (another scheme is not ours to read)."""
    scheme, _, value = conn.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def is_api_path(path: str) -> bool:
    return path.startswith("/api/") or path == "/healthz"


def broker_api(conn: HTTPConnection) -> BrokerApi:
    api: BrokerApi = conn.app.state.api
    return api


def app_settings(conn: HTTPConnection) -> Settings:
    settings: Settings = conn.app.state.settings
    return settings


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


def _clear_cookie(response: Response, request: Request) -> Response:
    """A cookie that names no live session is dropped with the 401."""
    if request.cookies.get(cookie_name(app_settings(request))):
        clear_session_cookie(response, app_settings(request))
    return response


def origin_allowed(conn: HTTPConnection, settings: Settings) -> bool:
    """Allow-list check of the Origin header; a missing Origin is refused."""
    origin = conn.headers.get("origin")
    return origin is not None and origin.rstrip("/") in settings.origins


def csrf_ok(request: Request, session: WebSession) -> bool:
    sent = request.headers.get("x-csrf-token", "")
    return bool(sent) and secrets.compare_digest(sent, session.csrf)


def client_address(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"
