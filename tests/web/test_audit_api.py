"""The audit administrator reads the trail through the API (real app, real slapd, fake
host): the other administrators' actions and every refusal are there, filtered and paged;
the CSV export opens right in Excel and WPS (a byte-order mark; a value that would be a
formula is shown as text); the chain is checked and a record edited in the database is
named; each reading is itself recorded. Only the audit administrator gets any of it
(tests/web/test_access.py)."""

from __future__ import annotations

import csv
import io
import sqlite3

from tests.web.conftest import FakeHostBroker

FORMULA = "=HYPERLINK(\"http://evil.example\")"


def test_the_audit_administrator_reads_exports_and_checks_the_trail(
        fake: FakeHostBroker) -> None:
    c = fake.broker.client()
    # a sign-in refused with a name a spreadsheet would run as a formula
    assert c.post("/api/session", json={"username": FORMULA, "password": "x"}
                  ).status_code in (400, 401)
    fake.broker.login("zhaoliu")  # the system administrator
    auditor = fake.broker.login("zhengshi")

    page = auditor.client.get("/api/admin/audit", params={"actor": "zhaoliu"})
    assert page.status_code == 200, page.text
    records = page.json()["records"]
    assert [(r["action"], r["outcome"], r["role"]) for r in records] == [
        ("login", "ok", "sysadmin")]
    everything = auditor.client.get("/api/admin/audit", params={"limit": 2}).json()
    assert len(everything["records"]) == 2 and everything["next"].startswith("before=")
    older = auditor.client.get(f"/api/admin/audit?limit=2&{everything['next']}").json()
    assert older["records"][0]["id"] < everything["records"][-1]["id"]
    assert auditor.client.get("/api/admin/audit", params={"days": "0"}).status_code == 400
    assert auditor.client.get("/api/admin/audit", params={"limit": "x"}).status_code == 400
    for huge in ("99999999999999999999", "³"):  # beyond SQLite's integers; not ASCII
        for path in ("/api/admin/audit", "/api/admin/audit.csv"):
            assert auditor.client.get(path, params={"before": huge}).status_code == 400

    exported = auditor.client.get("/api/admin/audit.csv")
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    body = exported.content.decode("utf-8")
    assert body.startswith("\ufeff")
    rows = list(csv.DictReader(io.StringIO(body[1:])))
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), key=int)  # oldest first
    refused = [r for r in rows if r["outcome"] != "ok" and r["action"] == "login"]
    assert refused and all(not r["actor"].startswith("=") for r in rows)
    assert any(r["actor"] == "'" + FORMULA[:128] or r["actor"].startswith("'=")
               for r in refused), refused
    assert all(r["hash"] for r in rows)

    ok = auditor.client.get("/api/admin/audit/verify").json()
    assert ok["intact"] and ok["problems"] == [] and ok["records"] >= 4
    # someone with the database file's rights edits a record
    db = sqlite3.connect(fake.broker.settings.effective_database_url.removeprefix("sqlite:///"))
    with db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("UPDATE audit SET outcome = 'ok' WHERE actor != 'zhengshi' AND "
                   "outcome != 'ok'")
    db.close()
    broken = auditor.client.get("/api/admin/audit/verify").json()
    assert not broken["intact"]
    assert any("edited" in p for p in broken["problems"]), broken

    mine = auditor.client.get("/api/admin/audit", params={"actor": "zhengshi"}).json()
    assert {r["action"] for r in mine["records"]} >= {
        "login", "audit-read", "audit-export", "audit-verify"}
    verifies = [r for r in mine["records"] if r["action"] == "audit-verify"]
    assert [r["outcome"] for r in verifies] == ["broken", "ok"]  # newest first
