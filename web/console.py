"""The websocket console routes: /console/{token} (the clerk's console) and
/helpdesk/view/{token} (the helpdesk's read-only view, broker.readonly_views). The token
is the credential (bound to the session cookie, checked by the use case). The routes
declare their access like every other (CONSOLE: Origin on the allow-list), and check it
with web.access's own check before anything else, as a websocket is not a Starlette
Route."""

from __future__ import annotations

import asyncio
import contextlib

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from broker.consoles import POLICY_VIOLATION, ConsoleRefused
from web.access import (
    Access,
    app_settings,
    bearer_secret,
    broker_api,
    client_address,
    cookie_name,
    origin_allowed,
)

CONSOLE = Access(None, origin=True)


class StarletteSocket:
    """Adapts Starlette's WebSocket to the tunnel's BrowserSocket."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def recv(self) -> bytes | None:
        try:
            message = await self.ws.receive()
        except WebSocketDisconnect:
            return None
        if message["type"] == "websocket.disconnect":
            return None
        data = message.get("bytes")
        if data is None:  # text frames are not RFB; treat as a hostile client
            return None
        assert isinstance(data, bytes)
        return data

    async def send(self, data: bytes) -> None:
        await self.ws.send_bytes(data)


async def console(ws: WebSocket) -> None:
    """Refusals come before the upgrade is accepted: the browser sees HTTP 403."""
    api, settings = broker_api(ws), app_settings(ws)
    consoles = api.consoles
    source = client_address(ws)
    if bearer_secret(ws) is not None:  # API tokens are for the API, not for consoles
        await ws.close(code=POLICY_VIOLATION)
        return
    if not origin_allowed(ws, settings):
        await consoles.refuse_origin(source)
        await ws.close(code=POLICY_VIOLATION)
        return
    task = asyncio.current_task()
    assert task is not None
    try:
        admission = await consoles.admit(ws.path_params["token"],
                                         ws.cookies.get(cookie_name(settings)), source,
                                         close=lambda: _cancel(task))
    except ConsoleRefused:
        await ws.close(code=POLICY_VIOLATION)
        return
    requested = ws.scope.get("subprotocols") or []
    await ws.accept(subprotocol="binary" if "binary" in requested else None)
    closing = await consoles.relay(admission, StarletteSocket(ws))
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):  # already closed
        await ws.close(code=closing.code, reason=closing.reason)


async def helpdesk_view(ws: WebSocket) -> None:
    """A read-only view: refusals come before the upgrade (HTTP 403 for the browser)."""
    api, settings = broker_api(ws), app_settings(ws)
    source = client_address(ws)
    if bearer_secret(ws) is not None:  # API tokens are for the API, not for views
        await ws.close(code=POLICY_VIOLATION)
        return
    if not origin_allowed(ws, settings):
        await api.consoles.refuse_origin(source)
        await ws.close(code=POLICY_VIOLATION)
        return
    cookie = ws.cookies.get(cookie_name(settings))
    if not (await api.policy.current()).admits(source):  # the helpdesk's networks only
        session = await api.signin.session(cookie)
        if session is not None:
            await api.policy.refused(session.principal, "/helpdesk/view", source)
        await ws.close(code=POLICY_VIOLATION)
        return
    try:
        admission = await api.views.admit(ws.path_params["token"], cookie, source)
    except ConsoleRefused:
        await ws.close(code=POLICY_VIOLATION)
        return
    requested = ws.scope.get("subprotocols") or []
    await ws.accept(subprotocol="binary" if "binary" in requested else None)
    closing = await api.views.relay(admission, StarletteSocket(ws))
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):  # already closed
        await ws.close(code=closing.code, reason=closing.reason)


console.access = CONSOLE  # type: ignore[attr-defined]  # read by the route table test
helpdesk_view.access = CONSOLE  # type: ignore[attr-defined]
routes = [WebSocketRoute("/console/{token}", console),
          WebSocketRoute("/helpdesk/view/{token}", helpdesk_view)]


def _cancel(task: asyncio.Task[object]) -> None:
    task.cancel()
