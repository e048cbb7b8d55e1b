"""The audit trail is append-only and tamper-evident (vdi.audit, vdi.audit_chain,
migration 0013) on a real SQLite database: every record written, by `record` or in
another store's transaction, is chained; the database refuses UPDATE and DELETE; and
once someone with the database owner's rights drops those triggers and edits, deletes
or reorders records, `verify` names the record where the chain breaks. Concurrent
writers still make one chain. PostgreSQL: tests/vdi/test_audit_chain_pg.py."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session, sessionmaker

from vdi.audit import AuditLog
from vdi.audit_chain import SHA256, SM3, Content, chain_hash, preferred_algorithm
from vdi.cli import main
from vdi.db import make_engine, migrate, session_factory
from vdi.models import AuditRow

AT = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def write(db: sessionmaker[Session], n: int, *, start: int = 0) -> AuditLog:
    ticks = iter(range(10_000))
    audit = AuditLog(db, clock=lambda: AT + timedelta(seconds=next(ticks)))
    for i in range(start, start + n):
        audit.record(actor=f"clerk{i}", role="staff", action="login", target="-",
                     source="10.1.2.3", outcome="ok", detail=f"窗口 {i}", office="街道一")
    return audit


def owner_sql(db: sessionmaker[Session], *statements: str) -> None:
    """What someone with the database file's rights could do, triggers dropped first."""
    with db.begin() as s:
        s.execute(text("DROP TRIGGER IF EXISTS audit_no_update"))
        s.execute(text("DROP TRIGGER IF EXISTS audit_no_delete"))
        for sql in statements:
            s.execute(text(sql))


def test_every_record_is_chained_as_it_is_written(db: sessionmaker[Session]) -> None:
    audit = write(db, 3)
    with db.begin() as s:  # a record in another change's transaction, as stores do
        s.add(audit.row(actor="admin", role="admin", action="pool-set", target="window",
                        source="cli", outcome="ok"))
        s.add(audit.row(actor="admin", role="admin", action="pool-set", target="records",
                        source="cli", outcome="ok"))
    with db() as s:
        rows = s.scalars(select(AuditRow).order_by(AuditRow.id)).all()
    assert [r.id for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0].prev_hash == "" and all(
        b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
    assert {r.hash_alg for r in rows} == {preferred_algorithm()}
    assert rows[0].office == "街道一" and rows[3].target == "window"
    verdict = audit.verify()
    assert verdict.intact and verdict.records == 5
    assert (verdict.last_id, verdict.last_hash) == (5, rows[-1].hash)


def test_sm3_is_used_where_openssl_offers_it() -> None:
    # GB/T 32905 example "abc"; this machine's cryptography build has SM3
    assert preferred_algorithm() == SM3
    content = Content(id=1, at=AT, actor="a", role="r", office=None, action="x", target="t",
                      source="s", outcome="ok", detail="")
    assert chain_hash(SM3, "", content) != chain_hash(SHA256, "", content)
    with pytest.raises(ValueError, match="unknown audit hash algorithm"):
        chain_hash("md5", "", content)


@pytest.mark.parametrize("statement", [
    "UPDATE audit SET outcome = 'refused' WHERE id = 2",
    "DELETE FROM audit WHERE id = 2",
    "DELETE FROM audit",
])
def test_the_database_refuses_to_change_or_delete_a_record(
        db: sessionmaker[Session], statement: str) -> None:
    write(db, 3)
    with pytest.raises(DatabaseError, match="append-only"), db.begin() as s:
        s.execute(text(statement))
    assert AuditLog(db).verify().intact


Tamper = Callable[[sessionmaker[Session]], None]


@pytest.mark.parametrize("tamper, expected", [
    (lambda db: owner_sql(db, "UPDATE audit SET outcome = 'ok', detail = '' WHERE id = 3"),
     ["record 3: edited"]),
    (lambda db: owner_sql(db, "DELETE FROM audit WHERE id = 3"),
     ["record 4: does not follow record 2"]),
    (lambda db: owner_sql(db, "DELETE FROM audit WHERE id = 1"),
     ["record 2: is not the first record"]),
    # two records swap places (their ids exchanged)
    (lambda db: owner_sql(db, "UPDATE audit SET id = 100 WHERE id = 2",
                          "UPDATE audit SET id = 2 WHERE id = 3",
                          "UPDATE audit SET id = 3 WHERE id = 100"),
     ["record 2: edited", "record 2: does not follow", "record 3: edited"]),
    # a record whose hash was removed
    (lambda db: owner_sql(db, "UPDATE audit SET hash = NULL WHERE id = 5"),
     ["record 5: carries no hash"]),
], ids=["edited", "deleted", "first-deleted", "reordered", "hash-removed"])
def test_verify_finds_the_record_where_the_chain_breaks(
        db: sessionmaker[Session], tamper: Tamper, expected: list[str]) -> None:
    audit = write(db, 6)
    assert audit.verify().intact
    tamper(db)
    verdict = audit.verify()
    assert not verdict.intact
    for part in expected:
        assert any(p.startswith(part) for p in verdict.problems), verdict.problems


def write_at_once(logs: list[AuditLog], threads: int, each: int) -> None:
    """`threads` writers at once, writer n through logs[n % len(logs)], `each` records
    apiece; fails the test with any writer's error."""
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(each):
                logs[n % len(logs)].record(actor=f"w{n}", role="staff", action="login",
                                           target=str(i), source="-", outcome="ok")
        except BaseException as e:  # reported below
            errors.append(e)

    running = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for t in running:
        t.start()
    for t in running:
        t.join()
    assert not errors


def test_concurrent_writers_make_one_chain(db: sessionmaker[Session]) -> None:
    audit = AuditLog(db)
    write_at_once([audit], threads=8, each=25)
    verdict = audit.verify()
    assert verdict.intact and verdict.records == 200, verdict.problems


def test_vdi_audit_verify_names_an_edited_record(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'vdi.sqlite3'}"
    config = tmp_path / "vdi.toml"
    config.write_text(f'database_url = "{url}"\nstate_dir = "{tmp_path / "state"}"\n')
    migrate(url)
    engine = make_engine(url)
    db = session_factory(engine)
    write(db, 4)
    assert main(["--config", str(config), "audit", "verify"]) == 0
    out = capsys.readouterr().out
    assert "audit trail: 4 records, chain intact; last #4 " in out
    owner_sql(db, "UPDATE audit SET actor = 'someone-else' WHERE id = 2")
    assert main(["--config", str(config), "audit", "verify"]) == 1
    out = capsys.readouterr().out
    assert "the chain is BROKEN" in out and "record 2: edited" in out
    # each check is itself a record: the first one (intact) follows the tampered trail
    with db() as s:
        checks = s.scalars(select(AuditRow).where(AuditRow.action == "audit-verify")
                           .order_by(AuditRow.id)).all()
    assert [c.outcome for c in checks] == ["ok", "broken"]
    engine.dispose()


def test_a_clock_in_another_zone_still_verifies(db: sessionmaker[Session]) -> None:
    beijing = timezone(timedelta(hours=8))
    audit = AuditLog(db, clock=lambda: datetime(2026, 12, 8, 9, 0, tzinfo=beijing))
    audit.record(actor="a", role="staff", action="login", target="-", source="-",
                 outcome="ok")
    assert audit.verify().intact
