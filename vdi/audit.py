"""Append-only audit trail: every login, admin and helpdesk action and every denial.

Two ways to write an entry: `record(...)` in a transaction of its own, or `row(...)`
handed to the store whose change it audits (SessionStore.create, TokenStore.issue), which
adds it in the same transaction: the change and its entry are committed together or not
at all, and a busy broker saves a transaction per request. Call `written(row)` after
that commit for the log line `record` writes itself.

Every record is chained as it is written (vdi.audit_chain): `chain_new_records` runs
before each flush of a session made by vdi.db.session_factory, gives the new records
the next ids and their hashes under a lock (SQLite's write lock, which every write
transaction takes up front; a transaction-scoped advisory lock on PostgreSQL), so two
brokers writing at once still make one chain. The database refuses UPDATE and DELETE of
audit rows (triggers of migration 0013). The log line of each record carries its hash:
a copy of the chain's head outside the database, against which a trail cut short at its
end is found.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from vdi.audit_chain import Content, Link, Verdict, chain_hash, preferred_algorithm, verify
from vdi.domain import utc_now
from vdi.models import AuditRow

log = logging.getLogger("vdi.audit")


class AuditLog:
    def __init__(self, sessions: sessionmaker[Session],
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._sessions = sessions
        self._clock = clock

    def row(self, *, actor: str, role: str, action: str, target: str, source: str,
            outcome: str, detail: str = "", office: str | None = None) -> AuditRow:
        """An entry not yet written (fields cut to their column sizes). Never given
        secrets."""
        return AuditRow(at=self._clock(), actor=actor[:128], role=role[:32], action=action[:64],
                        target=target[:255], source=source[:64], outcome=outcome[:32],
                        detail=detail[:2000], office=office[:64] if office else None)

    def record(self, *, actor: str, role: str, action: str, target: str, source: str,
               outcome: str, detail: str = "", office: str | None = None) -> None:
        """Write one entry in a transaction of its own. Blocks on the database."""
        row = self.row(actor=actor, role=role, action=action, target=target, source=source,
                       outcome=outcome, detail=detail, office=office)
        with self._sessions.begin() as s:
            s.add(row)
        self.written(row)

    @staticmethod
    def written(row: AuditRow) -> None:
        """The log line for an entry that was committed."""
        log.info("audit #%s actor=%s action=%s target=%s outcome=%s %s=%s", row.id, row.actor,
                 row.action, row.target, row.outcome, row.hash_alg, row.hash)

    def verify(self, batch: int = 1000) -> Verdict:
        """Check the whole trail's chain (vdi.audit_chain.verify), reading it in batches."""
        with self._sessions() as s:
            return verify(_links(s, batch))


def _links(s: Session, batch: int) -> Iterator[Link]:
    after = 0
    while True:
        rows = s.scalars(select(AuditRow).where(AuditRow.id > after)
                         .order_by(AuditRow.id).limit(batch)).all()
        if not rows:
            return
        for r in rows:
            yield Link(content_of(r), r.hash_alg, r.prev_hash, r.hash)
        after = rows[-1].id
        s.expunge_all()


def content_of(row: AuditRow) -> Content:
    return Content(id=row.id, at=row.at, actor=row.actor, role=row.role, office=row.office,
                   action=row.action, target=row.target, source=row.source,
                   outcome=row.outcome, detail=row.detail or "")


# PostgreSQL: the advisory lock that orders the writers of the chain ("vdia")
AUDIT_LOCK_KEY = 0x76646961


def chain_new_records(session: Session, _context: Any, _instances: Any) -> None:
    """Before a flush: the session's new audit records get the next ids, in the order they
    were added, and their chained hashes (listened to by vdi.db.session_factory)."""
    new = [o for o in session.new if isinstance(o, AuditRow)]
    if not new:
        return
    postgres = session.get_bind().dialect.name == "postgresql"
    with session.no_autoflush:
        if postgres:
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK_KEY})
        last = session.execute(select(AuditRow.id, AuditRow.hash)
                               .order_by(AuditRow.id.desc()).limit(1)).first()
    last_id, prev = (int(last[0]), last[1] or "") if last else (0, "")
    algorithm = preferred_algorithm()
    for row in new:
        last_id += 1
        row.id = last_id
        if row.at.tzinfo is not None:  # hashed as it reads back: UTC
            row.at = row.at.astimezone(UTC)
        row.detail = row.detail or ""
        row.hash_alg, row.prev_hash = algorithm, prev
        row.hash = chain_hash(algorithm, prev, content_of(row))
        prev = row.hash
    if postgres:  # the sequence follows, so an insert that takes its id from it still fits
        with session.no_autoflush:
            session.execute(text("SELECT setval(pg_get_serial_sequence('audit', 'id'), :id)"),
                            {"id": last_id})
