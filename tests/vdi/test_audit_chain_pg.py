"""The audit trail on a real PostgreSQL server (deploy/postgres/): the database refuses
UPDATE, DELETE and TRUNCATE of audit rows, and two brokers' engines writing at once make
one chain (the advisory lock orders them)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DatabaseError

from harness.pg_server import PgServer
from tests.vdi.test_audit_chain import write_at_once
from vdi.audit import AuditLog
from vdi.db import make_engine, session_factory

pytestmark = pytest.mark.real


@pytest.fixture
def engines(pg: PgServer) -> Iterator[list[Engine]]:
    """Two engines, as two brokers have; the audit table emptied first (by its owner,
    the TRUNCATE trigger off for that transaction only)."""
    made = [make_engine(pg.url) for _ in range(2)]
    with made[0].begin() as conn:
        conn.execute(text("ALTER TABLE audit DISABLE TRIGGER audit_no_truncate"))
        conn.execute(text("TRUNCATE audit"))
        conn.execute(text("ALTER TABLE audit ENABLE TRIGGER audit_no_truncate"))
    yield made
    for e in made:
        e.dispose()


@pytest.mark.parametrize("statement", [
    "UPDATE audit SET outcome = 'refused'", "DELETE FROM audit", "TRUNCATE audit"])
def test_the_database_refuses_to_change_or_delete_records(engines: list[Engine],
                                                          statement: str) -> None:
    db = session_factory(engines[0])
    AuditLog(db).record(actor="a", role="staff", action="login", target="-", source="-",
                        outcome="ok")
    with pytest.raises(DatabaseError, match="append-only"), db.begin() as s:
        s.execute(text(statement))
    assert AuditLog(db).verify().records == 1


def test_two_brokers_writing_at_once_make_one_chain(engines: list[Engine]) -> None:
    logs = [AuditLog(session_factory(e)) for e in engines]
    write_at_once(logs, threads=6, each=30)
    verdict = logs[0].verify()
    assert verdict.intact and verdict.records == 180, verdict.problems
