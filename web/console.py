"""The websocket console route: /console/{token}."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import update
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from broker.activity import TooManyTunnels
from broker.tokens import ConsoleGrant, TokenRejected
from broker.tunnel import BrowserRefused, ConsoleTarget, TunnelError, run_tunnel
from pools.hypervisor import HypervisorError, new_vnc_password
from vdi.catalog import desktop_from_row
from vdi.domain import Desktop, DesktopState, Power
from vdi.models import DesktopRow
from web.security import client_address, current_session, origin_allowed, services
from web.services import Services

log = logging.getLogger(__name__)
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
RECLAIMED = 4001  # the idle policy took the desktop back: the page says why, no retry


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
    svc = services(ws)
    source = client_address(ws)
    token = ws.path_params["token"]
    if not origin_allowed(ws, svc.settings):
        await _deny(svc, ws, "-", source, "bad origin")
        return
    session = await current_session(ws)
    try:
        grant = await svc.db_call(lambda: svc.tokens.consume(
            token, session_hash=session.id_hash if session else None))
    except TokenRejected as e:
        await _deny(svc, ws, session.principal.username if session else "-", source, e.reason)
        return
    # compare-and-set: the console opens only on a desktop still this clerk's and on
    # (a reclaim that won first makes this fail; one that comes later sees the console)
    desktop = await svc.db_call(_mark_console_open, svc, grant)
    if desktop is None or desktop.vnc_host is None or desktop.vnc_port is None:
        await _deny(svc, ws, grant.username, source, "desktop no longer assigned")
        return
    vnc_host, vnc_port = desktop.vnc_host, desktop.vnc_port
    task = asyncio.current_task()
    assert task is not None
    try:
        tunnel = svc.tunnels.open(username=grant.username, session_hash=grant.session_hash,
                                  desktop_id=grant.desktop_id,
                                  close=lambda: _cancel(task))
    except TooManyTunnels:
        await _deny(svc, ws, grant.username, source, "too many consoles open")
        return
    requested = ws.scope.get("subprotocols") or []
    await ws.accept(subprotocol="binary" if "binary" in requested else None)

    async def prepare() -> ConsoleTarget:
        password = new_vnc_password()
        try:
            await svc.calls.run(desktop.host_uri, lambda h: h.set_console_password(
                desktop.domain_name, password, svc.settings.vnc_password_valid_s))
        except HypervisorError as e:
            raise TunnelError(f"desktop host unavailable: {e}") from e
        return ConsoleTarget(host=vnc_host, port=vnc_port, password=password)

    reason = "closed"
    try:
        reason = await run_tunnel(StarletteSocket(ws), prepare,
                                  on_input=lambda: svc.tunnels.input_seen(grant.desktop_id),
                                  max_cut_text=svc.settings.max_ws_frame_bytes,
                                  setup_lock=svc.tunnels.setup_lock(grant.desktop_id))
    except BrowserRefused as e:
        reason = str(e)
        log.info("console %s: %s", grant.desktop_id, e)
        await _close(ws, POLICY_VIOLATION, "handshake refused")
    except TunnelError as e:
        reason = str(e)
        log.warning("console %s: %s", grant.desktop_id, e)
        await _close(ws, TRY_AGAIN_LATER, "desktop console unavailable")
    except asyncio.CancelledError:
        if tunnel.closed_because:  # the idle policy took the desktop back
            reason = f"closed by the broker: {tunnel.closed_because}"
            await _close(ws, RECLAIMED, tunnel.closed_because)
        else:
            reason = "closed by the broker (session ended)"
            await _close(ws, POLICY_VIOLATION, "session ended")
    except Exception as e:  # report it and close; one bad tunnel must not hurt others
        reason = f"tunnel failed: {e.__class__.__name__}"
        log.exception("console %s failed", grant.desktop_id)
        await _close(ws, 1011, "tunnel error")
    finally:
        svc.tunnels.closed(tunnel)
        await svc.db_call(_record_disconnect, svc, grant, reason, source)
    await _close(ws, 1000, "bye")


def _cancel(task: asyncio.Task[object]) -> None:
    task.cancel()


def _mark_console_open(svc: Services, grant: ConsoleGrant) -> Desktop | None:
    now = svc.clock()
    with svc.db.begin() as s:
        row = s.scalars(update(DesktopRow).where(
            DesktopRow.id == grant.desktop_id, DesktopRow.state == DesktopState.ASSIGNED.value,
            DesktopRow.assigned_user == grant.username, DesktopRow.power == Power.ON.value)
            .values(console_since=now, console_seen_at=now)
            .returning(DesktopRow).execution_options(synchronize_session=False)).first()
        return desktop_from_row(row) if row is not None else None


def _record_disconnect(svc: Services, grant: ConsoleGrant, reason: str, source: str) -> None:
    if not svc.tunnels.open_for(desktop_id=grant.desktop_id):  # its last console here
        with svc.db.begin() as s:  # (another broker's heartbeat says if it has one)
            s.execute(update(DesktopRow).where(DesktopRow.id == grant.desktop_id,
                                               DesktopRow.assigned_user == grant.username)
                      .values(last_disconnect_at=svc.clock(), console_since=None,
                              console_seen_at=None))
    svc.audit.record(actor=grant.username, role="-", action="console", target=grant.desktop_id,
                     source=source, outcome="closed", detail=reason[:300])


async def _deny(svc: Services, ws: WebSocket, actor: str, source: str, reason: str) -> None:
    await svc.db_call(lambda: svc.audit.record(actor=actor, role="-", action="console",
                                               target="-", source=source, outcome="denied",
                                               detail=reason))
    await ws.close(code=POLICY_VIOLATION)


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):  # already closed
        await ws.close(code=code, reason=reason)


routes = [WebSocketRoute("/console/{token}", console)]
