"""The consoles' signals, written by each broker: input times and the heartbeat of the
consoles open here. The same round closes the consoles this broker should no longer
carry: the idle policy took their desktop back, the helpdesk disconnected them, or their
session ended (logged out, expired) through any broker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.activity import Tunnel, TunnelRegistry
from broker.disconnects import DisconnectStore
from broker.roles import groups_entitled
from broker.sessions import SessionStore
from vdi import desktops
from vdi.domain import DesktopState, utc_now
from vdi.models import DesktopRow, PoolRow

log = logging.getLogger(__name__)
SESSION_ENDED = ""  # a kick without a reason for the page: the session is gone


class ConsoleSignals:
    def __init__(self, db: sessionmaker[Session], tunnels: TunnelRegistry,
                 sessions: SessionStore, *, flush_s: float,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._db = db
        self._tunnels = tunnels
        self._sessions = sessions
        self._flush_s = flush_s
        self._clock = clock

    async def run(self) -> None:
        """Flush every `flush_s` until cancelled; a failed round is retried whole."""
        while True:
            await asyncio.sleep(self._flush_s)
            try:
                kicks = await asyncio.to_thread(self.flush)
            except Exception:  # the database hiccuped: the next round writes it all
                log.exception("writing console signals failed")
                continue
            for tunnel, because in kicks:  # tunnels are closed on the event loop
                if because == SESSION_ENDED:
                    tunnel.close()
                else:
                    self._tunnels.kick(tunnel, because)

    def flush(self) -> list[tuple[Tunnel, str]]:
        """Write the consoles' input times and their heartbeat (still open, as of now);
        return the tunnels to close (the caller closes them on the event loop) with the
        reason their page is told ("" when their session ended). Blocks on the database."""
        pending = self._tunnels.pending_input()
        open_here = self._tunnels.desktops_open()
        if not pending and not open_here:
            return []
        try:
            return self._write(pending, open_here)
        except Exception:
            self._tunnels.unflushed(pending)  # the next round writes them (the caller logs)
            raise

    def _write(self, pending: dict[str, datetime],
               open_here: dict[str, list[Tunnel]]) -> list[tuple[Tunnel, str]]:
        now = self._clock()
        with self._db.begin() as s:
            for desktop_id, at in pending.items():  # never back in time ("still here")
                desktops.record_input(s, desktop_id, at)
            if not open_here:
                return []
            desktops.console_heartbeat(s, list(open_here), now)
            rows = list(s.execute(select(DesktopRow.id, DesktopRow.state,
                                         DesktopRow.assigned_user, DesktopRow.kicked_at,
                                         DesktopRow.pool_id)
                                  .where(DesktopRow.id.in_(list(open_here)))))
            pool_groups: dict[str, list[str]] = {
                pool_id: groups for pool_id, groups in s.execute(
                    select(PoolRow.id, PoolRow.entitled_groups).where(
                        PoolRow.id.in_(list({r.pool_id for r in rows}))))}
            disconnected = DisconnectStore.latest(s, open_here)
        live = self._sessions.live_among(
            t.session_hash for tunnels in open_here.values() for t in tunnels)
        kicks = []
        for desktop_id, state, user, kicked_at, pool_id in rows:
            for tunnel in open_here.get(desktop_id, ()):
                if state != DesktopState.ASSIGNED.value or user != tunnel.username:
                    kicks.append((tunnel, "reclaimed"))
                elif kicked_at is not None and kicked_at >= tunnel.opened_at:
                    kicks.append((tunnel, "idle"))
                elif (cut_at := disconnected.get(desktop_id)) is not None and \
                        cut_at >= tunnel.opened_at:
                    kicks.append((tunnel, "helpdesk"))
                elif tunnel.session_hash not in live:
                    kicks.append((tunnel, SESSION_ENDED))
                elif not groups_entitled(pool_groups.get(pool_id, ()),
                                         live[tunnel.session_hash]):
                    # the directory took the pool from the user (re-checked groups):
                    # the session lives on for their other pools, this console does not
                    kicks.append((tunnel, SESSION_ENDED))
        return kicks
