"""Running the broker: the web app in uvicorn, the worker alone, or both in one process.
The only module that imports uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import uvicorn

from vdi.settings import Settings
from vdi.wiring import Role, build_app, run_worker


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for the broker; `vdi serve` and bench/tunnel.py both use them.

    The websocket implementation is named rather than left to "auto" (which would pick
    wsproto if websockets went missing): on the console tunnel, websockets' sans-I/O core
    needed half the CPU per GB of wsproto browser->server and 10-15 % less than uvicorn's
    older websockets protocol (measured with bench/tunnel.py)."""
    return {"host": settings.listen_host, "port": settings.listen_port,
            "ws": "websockets-sansio", "ws_max_size": settings.max_ws_frame_bytes,
            "ws_per_message_deflate": False, "proxy_headers": False}


def serve(settings: Settings, role: str) -> int:
    """Run until interrupted. Returns the process's exit status."""
    chosen = Role(role)
    if chosen is Role.WORKER:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_worker(settings))
        return 0
    uvicorn.run(build_app(settings, role=chosen), **server_options(settings), log_level="info")
    return 0
