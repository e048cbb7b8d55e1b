"""The `vdi` commands for street offices and the audit trail: offices made and listed,
a pool put in an office (an unknown one refused), the trail exported as CSV a
spreadsheet shows as text, and each of these on record."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.vdi.test_cli import config, database, vdi  # noqa: F401 (the fixture)
from vdi.audit import AuditLog
from vdi.db import make_engine, session_factory
from vdi.domain import utc_now
from vdi.models import AccessPolicyRow, AuditRow, PoolRow

G = "ou=groups,dc=district,dc=example"


def test_offices_and_a_pool_of_one(config: Path,  # noqa: F811
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert vdi(config, "office-set", "dongjie", "--name", "东街街道办", "--clerk-group",
               f"cn=dongjie-window,{G}", "--helpdesk-group", f"cn=helpdesk,{G}") == 0
    assert "office dongjie created" in capsys.readouterr().out
    assert vdi(config, "office-set", "Bad Id", "--name", "x") == 2
    assert "office id" in capsys.readouterr().err
    assert vdi(config, "pool-set", "window", "--name", "窗口", "--image", "demo",
               "--group", f"cn=window-staff,{G}", "--office", "nowhere") == 2
    assert "no such office: nowhere" in capsys.readouterr().err
    assert vdi(config, "pool-set", "window", "--name", "窗口", "--image", "demo",
               "--group", f"cn=window-staff,{G}", "--office", "dongjie") == 0
    capsys.readouterr()
    assert vdi(config, "offices") == 0
    out = capsys.readouterr().out
    assert out.startswith("dongjie\t东街街道办\tclerks: cn=dongjie-window") and \
        "pools: window" in out
    assert vdi(config, "pool-set", "window", "--office", "none") == 0
    engine = make_engine(database(config))
    with session_factory(engine)() as s:
        assert s.get(PoolRow, "window").office is None  # type: ignore[union-attr]
        actions = [a.action for a in s.scalars(select(AuditRow).order_by(AuditRow.id))]
    assert actions.count("office-set") == 1 and actions.count("pool-set") == 2
    engine.dispose()


def test_the_trail_exported_as_csv(config: Path, tmp_path: Path,  # noqa: F811
                                   capsys: pytest.CaptureFixture[str]) -> None:
    engine = make_engine(database(config))
    AuditLog(session_factory(engine)).record(
        actor="=cmd|' /C calc'!A0", role="-", action="login", target="-", source="10.0.0.9",
        outcome="denied")
    out = tmp_path / "audit.csv"
    assert vdi(config, "audit", "export", "--days", "1", "--out", str(out)) == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("\ufeff")
    rows = list(csv.DictReader(io.StringIO(text[1:])))
    [denied] = [r for r in rows if r["outcome"] == "denied"]
    assert denied["actor"] == "'=cmd|' /C calc'!A0" and denied["source"] == "10.0.0.9"
    assert denied["target"] == "-"  # a lone dash stays as it is
    assert vdi(config, "audit", "export", "--days", "0") == 2
    assert "days must be" in capsys.readouterr().err
    with session_factory(engine)() as s:
        assert s.scalars(select(AuditRow.action).where(
            AuditRow.action == "audit-export")).all() == ["audit-export"]
    engine.dispose()


def test_full_width_formula_starts_are_text_too() -> None:
    from broker.audit_trail import cell

    assert [cell(v) for v in ("＝1+1", "＠SUM(A1)", "\nx", "-", "-1+2", "张三")] == [
        "'＝1+1", "'＠SUM(A1)", "'\nx", "-", "'-1+2", "张三"]


def test_the_access_policy_is_shown_and_put_back_from_the_broker_machine(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    assert vdi(config, "migrate") == 0
    engine = make_engine(database(config))
    db = session_factory(engine)
    with db.begin() as s:  # a policy that locked everyone out (an admin network renumbered)
        s.add(AccessPolicyRow(id=1, data={"admin_networks": ["10.99.0.0/16"]}, version=4,
                              updated_at=utc_now(), updated_by="wujiu"))
    capsys.readouterr()
    assert vdi(config, "access-policy") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 4 and shown["policy"]["admin_networks"] == ["10.99.0.0/16"]
    assert vdi(config, "access-policy", "--reset") == 2
    assert "--reason" in capsys.readouterr().err
    assert vdi(config, "access-policy", "--reset", "--reason", "管理网段调整后无人能进入") == 0
    assert "version 5" in capsys.readouterr().out
    with db() as s:
        row = s.get(AccessPolicyRow, 1)
        assert row is not None and row.data["admin_networks"] == [] and row.version == 5
        [noted] = s.scalars(select(AuditRow).where(AuditRow.action == "policy-reset")).all()
    assert noted.actor.startswith("cli:") and "reason: 管理网段调整后无人能进入" in noted.detail
    assert AuditLog(db).verify().intact
    engine.dispose()
