"""Schema migration (Alembic) and the column types, on real SQLite files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session, sessionmaker

from vdi.db import alembic_config, make_engine, migrate
from vdi.models import AuditRow, Base, UtcDateTime

HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def test_migrate_creates_the_schema_at_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'dir' / 'vdi.sqlite3'}"  # parent dirs made too
    migrate(url)
    assert HEAD is not None
    assert current_revision(url) == HEAD
    engine = make_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert tables == set(Base.metadata.tables) | {"alembic_version"}


def test_migrate_is_idempotent_and_keeps_data(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO audit (at, actor, role, action, target, source, "
                              "outcome, detail) VALUES ('2026-01-05 08:00:00', 'alice', "
                              "'admin', 'pool.save', 'window', '10.0.0.7', 'ok', '')"))
        migrate(db_url)
        migrate(db_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT actor FROM audit")).scalars().all() == ["alice"]
    finally:
        engine.dispose()
    assert current_revision(db_url) == HEAD


def test_the_migrations_match_the_models(db_url: str) -> None:
    """An autogenerate diff of the migrated database against the models finds nothing:
    a model change without its migration fails here."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                             "compare_server_default": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_utc_datetime_gives_back_aware_utc(db: sessionmaker[Session]) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2026, 1, 5, 10, 30, 15, 123456, tzinfo=plus_two)
    with db.begin() as s:
        s.add(AuditRow(at=local, actor="alice", role="admin", action="a", target="t",
                       source="s", outcome="ok", detail=""))
    with db() as s:
        row = s.query(AuditRow).one()
        assert row.at.tzinfo is UTC
        assert row.at == local
        assert row.at == datetime(2026, 1, 5, 8, 30, 15, 123456, tzinfo=UTC)


def test_utc_datetime_rejects_naive_datetimes(db: sessionmaker[Session]) -> None:
    with pytest.raises(StatementError, match="naive datetime"), db.begin() as s:
        s.add(AuditRow(at=datetime(2026, 1, 5, 8, 0), actor="alice", role="admin",
                       action="a", target="t", source="s", outcome="ok", detail=""))
        s.flush()
    with db() as s:
        assert s.query(AuditRow).count() == 0


def test_utc_datetime_type_directly() -> None:
    column_type = UtcDateTime()
    dialect = sqlite.dialect()
    with pytest.raises(ValueError, match="naive"):
        column_type.process_bind_param(datetime(2026, 1, 5), dialect)
    assert column_type.process_bind_param(None, dialect) is None
    assert column_type.process_result_value(None, dialect) is None
    naive_from_sqlite = datetime(2026, 1, 5, 8, 0)
    assert column_type.process_result_value(naive_from_sqlite, dialect) == datetime(
        2026, 1, 5, 8, 0, tzinfo=UTC)
