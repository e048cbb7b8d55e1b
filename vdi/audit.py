"""Append-only audit trail: every login, admin and helpdesk action and every denial.

Two ways to write an entry: `record(...)` in a transaction of its own, or `row(...)`
handed to the store whose change it audits (SessionStore.create, TokenStore.issue), which
adds it in the same transaction: the change and its entry are committed together or not
at all, and a busy broker saves a transaction per request. Call `written(row)` after
that commit for the log line `record` writes itself.
"""

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

    def row(self, *, actor: str, role: str, action: str, target: str, source: str,
            outcome: str, detail: str = "") -> AuditRow:
        """An entry not yet written (fields cut to their column sizes). Never given
        secrets."""
        return AuditRow(at=self._clock(), actor=actor[:128], role=role[:32], action=action[:64],
                        target=target[:255], source=source[:64], outcome=outcome[:32],
                        detail=detail[:2000])

    def record(self, *, actor: str, role: str, action: str, target: str, source: str,
               outcome: str, detail: str = "") -> None:
        """Write one entry in a transaction of its own. Blocks on the database."""
        row = self.row(actor=actor, role=role, action=action, target=target, source=source,
                       outcome=outcome, detail=detail)
        with self._sessions.begin() as s:
            s.add(row)
        self.written(row)

    @staticmethod
    def written(row: AuditRow) -> None:
        """The log line for an entry that was committed."""
        log.info("audit actor=%s action=%s target=%s outcome=%s", row.actor, row.action,
                 row.target, row.outcome)
