"""Assignment, and the broker's other database paths, on a real PostgreSQL server.

The same exactly-once cases as on SQLite (test_assignment.py), here where the claim's
`SELECT ... FOR UPDATE SKIP LOCKED` really locks rows and real threads race in real
transactions. The server is Debian's PostgreSQL, started by
deploy/postgres/start-postgres.sh on a free loopback port; if it cannot start, these
tests fail with the script's output.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event, func, inspect, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

import vdi.db as vdi_db
from broker.assignment import Assigner, PoolFull
from broker.sessions import SessionStore
from broker.tokens import TokenRejected, TokenStore
from harness.pg_server import PgServer
from tests.broker.test_assignment import add_desktops, clerk, make_pool, race
from tests.conftest import ManualClock
from vdi.audit import AuditLog
from vdi.catalog import Catalog
from vdi.db import alembic_config, make_engine, migrate, session_factory
from vdi.domain import Desktop
from vdi.models import AuditRow, Base, DesktopRow, SessionRow

pytestmark = pytest.mark.real

TABLES = ("console_tokens", "sessions", "audit", "desktops", "images", "pools", "waiters",
          "claims")


@pytest.fixture
def pg_engine(pg: PgServer) -> Iterator[Engine]:
    """The broker's engine on the server, every table emptied first."""
    engine = make_engine(pg.url)
    with engine.begin() as conn:
        # the audit table refuses TRUNCATE (a trigger): its owner turns that off for
        # this transaction only
        conn.execute(text("ALTER TABLE audit DISABLE TRIGGER audit_no_truncate"))
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        conn.execute(text("ALTER TABLE audit ENABLE TRIGGER audit_no_truncate"))
    yield engine
    engine.dispose()


@pytest.fixture
def pg_db(pg_engine: Engine) -> sessionmaker[Session]:
    return session_factory(pg_engine)


class Statements:
    """The SQL text an engine sent, for checking what really reached the server."""

    def __init__(self, engine: Engine) -> None:
        self.sent: list[str] = []
        self._lock = threading.Lock()
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        with self._lock:
            self.sent.append(statement)


def test_migrations_run_on_postgresql_and_match_the_models(pg: PgServer) -> None:
    migrate(pg.url)  # again: idempotent
    engine = make_engine(pg.url)
    try:
        with engine.connect() as conn:
            head = ScriptDirectory.from_config(alembic_config(pg.url)).get_current_head()
            assert MigrationContext.configure(conn).get_current_revision() == head
            context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                             "compare_server_default": True})
            assert compare_metadata(context, Base.metadata) == []
        assert set(inspect(engine).get_table_names()) == (
            set(Base.metadata.tables) | {"alembic_version"})
    finally:
        engine.dispose()


def test_fifty_users_race_for_ten_desktops(pg_engine: Engine, pg_db: sessionmaker[Session],
                                           clock: ManualClock) -> None:
    Catalog(pg_db).save_pool(make_pool(max_size=10))
    add_desktops(pg_db, clock, 10)
    statements = Statements(pg_engine)
    assigner = Assigner(pg_db, clock=clock)
    results = race(50, lambda i: assigner.assign("window", clerk(i)))
    won = [r for r in results if isinstance(r, Desktop)]
    lost = [r for r in results if not isinstance(r, Desktop)]
    assert len(won) == 10
    assert len({d.id for d in won}) == 10
    assert len({d.assigned_user for d in won}) == 10
    assert Counter(type(e) for e in lost) == Counter({PoolFull: 40}), lost
    with pg_db() as s:
        rows = s.scalars(select(DesktopRow)).all()
    assert {r.id: r.assigned_user for r in rows} == {d.id: d.assigned_user for d in won}
    assert {r.state for r in rows} == {"assigned"}
    # the claim really locked rows on the server (SQLite would have dropped the clause)
    assert any("FOR UPDATE SKIP LOCKED" in sql for sql in statements.sent)


def test_one_users_parallel_requests_get_one_desktop(pg_db: sessionmaker[Session],
                                                     clock: ManualClock) -> None:
    Catalog(pg_db).save_pool(make_pool(max_size=10))
    add_desktops(pg_db, clock, 10)
    assigner = Assigner(pg_db, clock=clock)
    results = race(10, lambda _i: assigner.assign("window", clerk(7)))
    assert all(isinstance(r, Desktop) for r in results), results
    assert len({r.id for r in results if isinstance(r, Desktop)}) == 1
    with pg_db() as s:
        mine = s.scalars(select(DesktopRow.id).where(DesktopRow.assigned_user == "clerk7")).all()
        ready = s.scalars(select(DesktopRow.id).where(DesktopRow.state == "ready")).all()
    assert len(mine) == 1
    assert len(ready) == 9


def test_many_users_many_spares_all_served_once(pg_db: sessionmaker[Session],
                                                clock: ManualClock) -> None:
    """200 users, 2 parallel requests each, against 250 spares: everyone gets exactly one
    desktop and nobody waits for another's row lock (SKIP LOCKED)."""
    Catalog(pg_db).save_pool(make_pool(max_size=250))
    add_desktops(pg_db, clock, 250)
    assigner = Assigner(pg_db, clock=clock)
    results = race(400, lambda i: assigner.assign("window", clerk(i // 2)))
    assert all(isinstance(r, Desktop) for r in results), [
        r for r in results if not isinstance(r, Desktop)]
    by_user: dict[str, set[str]] = {}
    for r in results:
        assert isinstance(r, Desktop) and r.assigned_user is not None
        by_user.setdefault(r.assigned_user, set()).add(r.id)
    assert len(by_user) == 200
    assert all(len(ids) == 1 for ids in by_user.values())
    with pg_db() as s:
        assigned = s.scalars(select(DesktopRow.assigned_user).where(
            DesktopRow.state == "assigned")).all()
    assert sorted(str(user) for user in assigned) == sorted(by_user)


def test_a_spare_locked_by_another_claim_is_skipped_not_waited_for(
        pg_db: sessionmaker[Session], clock: ManualClock) -> None:
    Catalog(pg_db).save_pool(make_pool(max_size=10))
    oldest, second = add_desktops(pg_db, clock, 2)
    assigner = Assigner(pg_db, clock=clock)
    ex = ThreadPoolExecutor(1)
    try:
        with pg_db.begin() as holder:
            # another broker's claim, in flight: it holds the oldest spare's row lock
            locked = holder.scalars(select(DesktopRow.id).where(DesktopRow.id == oldest)
                                    .with_for_update()).one()
            assert locked == oldest
            started = time.monotonic()
            claim = ex.submit(assigner.assign, "window", clerk(1))
            done, _ = wait([claim], timeout=5)
            waited = time.monotonic() - started
        # the holder has let go: a claim that was waiting for it can finish now
        desktop = claim.result(timeout=30)
    finally:
        ex.shutdown(wait=True)
    assert done, f"the claim waited {waited:.1f} s for a locked row instead of skipping it"
    assert desktop.id == second


def test_sessions_tokens_and_audit_on_postgresql(pg_db: sessionmaker[Session],
                                                 clock: ManualClock) -> None:
    sessions = SessionStore(pg_db, idle_s=600, absolute_s=3600, clock=clock)
    tokens = TokenStore(pg_db, ttl_s=60, clock=clock)
    raw, session = sessions.create(clerk(1), source="127.0.0.1")
    clock.advance(61)
    assert sessions.get(raw) == session
    with pg_db() as s:  # last_seen was refreshed (a conditional UPDATE on a timestamptz)
        seen = s.scalars(select(SessionRow.last_seen_at)).one()
    assert seen == clock()
    token = tokens.issue(username="clerk1", session_hash=session.id_hash,
                         desktop_id="window-0000")
    grant = tokens.consume(token, session_hash=session.id_hash)
    assert grant.desktop_id == "window-0000"
    with pytest.raises(TokenRejected, match="already used"):
        tokens.consume(token, session_hash=session.id_hash)
    AuditLog(pg_db, clock=clock).record(actor="clerk1", role="staff", action="login",
                                        target="-", source="127.0.0.1", outcome="ok")
    with pg_db() as s:
        row = s.scalars(select(AuditRow)).one()
    assert row.at == clock() and row.at.tzinfo is UTC
    sessions.end(session.id_hash)
    assert sessions.get(raw) is None



def test_reads_run_without_a_transaction_and_writes_in_one(
        pg_db: sessionmaker[Session]) -> None:
    """READ COMMITTED gives each statement its own snapshot, so a read session runs in
    autocommit (no BEGIN/ROLLBACK round trips); an explicit begin() is a transaction."""
    def autocommit(s: Session) -> bool:
        driver = s.connection().connection.driver_connection
        assert driver is not None
        return bool(driver.autocommit)

    with pg_db() as s:
        assert autocommit(s)
        assert s.execute(text("SELECT txid_current_if_assigned()")).scalar() is None
    with pg_db.begin() as s:
        assert not autocommit(s)
        s.execute(text("SELECT txid_current()"))  # a transaction that holds an id
        assert s.execute(text("SELECT txid_current_if_assigned()")).scalar() is not None


def _catalog_reads(db: sessionmaker[Session]) -> list[str]:
    return [p.id for p in Catalog(db).pools()]


def test_a_server_restart_while_the_broker_was_idle_costs_no_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with PgServer() as server:
        migrate(server.url)
        engine = make_engine(server.url)
        try:
            db = session_factory(engine)
            assert _catalog_reads(db) == []  # pooled connections now exist
            with db.begin() as s:
                s.add(AuditRow(at=datetime.now(UTC), actor="a", role="r", action="x",
                               target="t", source="s", outcome="ok", detail=""))
            server.restart()
            monkeypatch.setattr(vdi_db, "PING_IDLE_S", 0.0)  # as if idle for a while
            assert _catalog_reads(db) == []  # the dead connection was checked and replaced
            with db.begin() as s:
                assert s.scalar(select(func.count()).select_from(AuditRow)) == 1
        finally:
            engine.dispose()


def test_a_restart_in_a_busy_moment_fails_the_request_in_flight_only() -> None:
    """Connections used moments ago are not checked (no round trip per checkout): the
    first request after a restart fails, and the disconnect resets the pool."""
    with PgServer() as server:
        migrate(server.url)
        engine = make_engine(server.url)
        try:
            db = session_factory(engine)
            assert _catalog_reads(db) == []
            server.restart()
            with pytest.raises(OperationalError):
                _catalog_reads(db)
            assert _catalog_reads(db) == []
        finally:
            engine.dispose()
