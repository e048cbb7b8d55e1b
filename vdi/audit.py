"""Append-only audit trail: every login, admin and helpdesk action and every denial."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from vdi.domain import utc_now
from vdi.models import AuditRow

log = logging.getLogger("vdi.audit")


class AuditLog:
    def __init__(self, sessions: sessionmaker[Session],
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._sessions = sessions
        self._clock = clock

    def record(self, *, actor: str, role: str, action: str, target: str, source: str,
               outcome: str, detail: str = "") -> None:
        """Write one entry. Blocks on the database; never given secrets."""
        row = AuditRow(at=self._clock(), actor=actor[:128], role=role[:32], action=action[:64],
                       target=target[:255], source=source[:64], outcome=outcome[:32],
                       detail=detail[:2000])
        with self._sessions.begin() as s:
            s.add(row)
        log.info("audit actor=%s action=%s target=%s outcome=%s", actor, action, target, outcome)
