"""Migration 0013 on data: the audit records already there are chained as they are (in
id order) and verify intact through the product's reader, the database then refuses to
change them, and the downgrade gives back the table as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import DatabaseError

from vdi.audit import AuditLog
from vdi.db import alembic_config, make_engine, session_factory


def test_existing_records_are_chained_and_then_protected(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'vdi.sqlite3'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "0012")
    raw = create_engine(url)
    with raw.begin() as c:
        for i, (actor, detail) in enumerate([("zhangsan", "窗口 3"), ("admin", "-"),
                                             ("lisi", "")], start=1):
            c.execute(text(
                "INSERT INTO audit (id, at, actor, role, action, target, source, outcome, "
                "detail) VALUES (:id, :at, :actor, 'staff', 'login', '-', '10.0.0.1', 'ok', "
                ":detail)"), {"id": i * 10, "at": f"2026-12-0{i} 09:00:00.000000",
                              "actor": actor, "detail": detail})
    command.upgrade(cfg, "0013")
    engine = make_engine(url)
    audit = AuditLog(session_factory(engine))
    verdict = audit.verify()
    assert verdict.intact and verdict.records == 3 and verdict.last_id == 30
    audit.record(actor="new", role="staff", action="login", target="-", source="-",
                 outcome="ok")  # continues the chain after the old ids
    assert audit.verify().intact and audit.verify().last_id == 31
    with pytest.raises(DatabaseError, match="append-only"), engine.begin() as c:
        c.execute(text("UPDATE audit SET actor = 'x' WHERE id = 10"))
    engine.dispose()
    command.downgrade(cfg, "0012")
    assert {"office", "hash_alg", "prev_hash", "hash"}.isdisjoint(
        col["name"] for col in inspect(raw).get_columns("audit"))
    with raw.begin() as c:  # no trigger left behind
        c.execute(text("DELETE FROM audit WHERE id = 31"))
    raw.dispose()
