"""Live console tunnels and the input they carry: the signals idle reclaim builds on.

In memory, per broker process: which tunnels are open (per user, per session, per
desktop) and when each desktop last saw keyboard or mouse input. `pending_input()`
hands the input times to a writer that persists them in batches.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from vdi.domain import utc_now


class TooManyTunnels(Exception):
    """The user already has the maximum number of consoles open."""


@dataclass
class Tunnel:
    id: int
    username: str
    session_hash: str
    desktop_id: str
    opened_at: datetime
    close: Callable[[], None] = field(repr=False)
    # why the broker closed it (the idle policy took the desktop back), if it did
    closed_because: str | None = None


class TunnelRegistry:
    def __init__(self, max_per_user: int, clock: Callable[[], datetime] = utc_now) -> None:
        self._max = max_per_user
        self._clock = clock
        self._lock = threading.Lock()
        self._tunnels: dict[int, Tunnel] = {}
        self._next = 0
        self._last_input: dict[str, datetime] = {}
        self._unflushed: dict[str, datetime] = {}
        self._closed_at: dict[str, datetime] = {}
        self._setup_locks: dict[str, asyncio.Lock] = {}

    def open(self, *, username: str, session_hash: str, desktop_id: str,
             close: Callable[[], None]) -> Tunnel:
        """Register a tunnel; raises TooManyTunnels over the per-user cap."""
        with self._lock:
            if sum(1 for t in self._tunnels.values() if t.username == username) >= self._max:
                raise TooManyTunnels(username)
            self._next += 1
            t = Tunnel(self._next, username, session_hash, desktop_id, self._clock(), close)
            self._tunnels[t.id] = t
            return t

    def setup_lock(self, desktop_id: str) -> asyncio.Lock:
        """The lock that serialises console setup on one desktop (see run_tunnel)."""
        with self._lock:
            return self._setup_locks.setdefault(desktop_id, asyncio.Lock())

    def closed(self, tunnel: Tunnel) -> None:
        with self._lock:
            self._tunnels.pop(tunnel.id, None)
            if not any(t.desktop_id == tunnel.desktop_id for t in self._tunnels.values()):
                self._closed_at[tunnel.desktop_id] = self._clock()

    def input_seen(self, desktop_id: str) -> None:
        now = self._clock()
        with self._lock:
            self._last_input[desktop_id] = now
            self._unflushed[desktop_id] = now

    def last_input(self, desktop_id: str) -> datetime | None:
        with self._lock:
            return self._last_input.get(desktop_id)

    def pending_input(self) -> dict[str, datetime]:
        """Input times not yet persisted; clears them (`unflushed` puts them back)."""
        with self._lock:
            out, self._unflushed = self._unflushed, {}
            return out

    def unflushed(self, times: dict[str, datetime]) -> None:
        """Input times whose write failed: kept for the next round (newer ones win)."""
        with self._lock:
            for desktop_id, at in times.items():
                newer = self._unflushed.get(desktop_id)
                if newer is None or newer < at:
                    self._unflushed[desktop_id] = at

    def open_for(self, *, desktop_id: str | None = None, session_hash: str | None = None,
                 username: str | None = None) -> list[Tunnel]:
        with self._lock:
            return [t for t in self._tunnels.values()
                    if (desktop_id is None or t.desktop_id == desktop_id)
                    and (session_hash is None or t.session_hash == session_hash)
                    and (username is None or t.username == username)]

    def desktops_open(self) -> dict[str, list[Tunnel]]:
        """The desktops with a console open here, each with its tunnels."""
        with self._lock:
            out: dict[str, list[Tunnel]] = {}
            for t in self._tunnels.values():
                out.setdefault(t.desktop_id, []).append(t)
            return out

    @staticmethod
    def kick(tunnel: Tunnel, because: str) -> None:
        """Close a tunnel for a reason its page is told (see web.console)."""
        tunnel.closed_because = because
        tunnel.close()

    def close_session(self, session_hash: str) -> int:
        """Close every tunnel opened under a session (logout). Returns how many."""
        tunnels = self.open_for(session_hash=session_hash)
        for t in tunnels:
            t.close()
        return len(tunnels)
