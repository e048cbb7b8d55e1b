"""The audit table owned by a role of its own (deploy/postgres/protect-audit.sh) on a real
PostgreSQL server: the broker's role still writes the chain and reads it, but can no
longer disable the append-only triggers, replace their function, take the table back,
drop it, or change a record. A server of its own: the other PostgreSQL tests empty the
audit table as its owner."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DatabaseError

from harness.pg_server import PgError, PgServer
from tests.vdi.test_audit_chain import write_at_once
from vdi.audit import AuditLog
from vdi.db import make_engine, migrate, session_factory

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def protected() -> Iterator[tuple[PgServer, Engine]]:
    with PgServer() as server:
        engine = make_engine(server.url)
        with pytest.raises(PgError, match="run vdi migrate first"):
            server.protect_audit()  # nothing to protect yet: says so
        migrate(server.url)
        AuditLog(session_factory(engine)).record(
            actor="a", role="sysadmin", action="pool-set", target="window", source="cli",
            outcome="ok")
        assert "owned by vdi_audit_owner" in server.protect_audit()
        server.protect_audit()  # idempotent
        yield server, engine
        engine.dispose()


def test_the_broker_still_writes_and_reads_the_chain(
        protected: tuple[PgServer, Engine]) -> None:
    server, engine = protected
    logs = [AuditLog(session_factory(engine)), AuditLog(session_factory(engine))]
    write_at_once(logs, threads=4, each=10)
    verdict = logs[0].verify()
    assert verdict.intact and verdict.records == 41, verdict.problems
    migrate(server.url)  # at the head already: nothing to do, and no error


@pytest.mark.parametrize(("statement", "refusal"), [
    ("ALTER TABLE audit DISABLE TRIGGER audit_append_only", "must be owner"),
    ("ALTER TABLE audit DISABLE TRIGGER audit_no_truncate", "must be owner"),
    ("ALTER TABLE audit OWNER TO vdi", "must be owner"),
    ("DROP TABLE audit", "must be owner"),
    ("DROP TRIGGER audit_append_only ON audit", "must be owner"),
    ("CREATE OR REPLACE FUNCTION vdi_audit_append_only() RETURNS trigger AS "
     "$$ BEGIN RETURN NEW; END $$ LANGUAGE plpgsql", "must be owner"),
    ("UPDATE audit SET outcome = 'refused'", "permission denied"),
    ("DELETE FROM audit", "permission denied"),
    ("TRUNCATE audit", "permission denied"),
    ("ALTER SCHEMA public RENAME TO elsewhere", "must be owner"),
])
def test_the_broker_role_cannot_undo_the_protection(
        protected: tuple[PgServer, Engine], statement: str, refusal: str) -> None:
    _, engine = protected
    with pytest.raises(DatabaseError, match=refusal), engine.begin() as conn:
        conn.execute(text(statement))
    assert AuditLog(session_factory(engine)).verify().intact


def test_the_broker_role_cannot_drop_the_database(protected: tuple[PgServer, Engine]) -> None:
    server, _ = protected
    other_db = make_engine(server.url.rsplit("/", 1)[0] + "/postgres").execution_options(
        isolation_level="AUTOCOMMIT")
    try:
        with pytest.raises(DatabaseError, match="must be owner"), other_db.connect() as conn:
            conn.execute(text("DROP DATABASE vdi"))
    finally:
        other_db.dispose()
