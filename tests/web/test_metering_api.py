"""Metering through the API (real app, real slapd, fake host): the audit and system
administrators read desktop-hours and sessions per office and pool for a range of the
district's days, as JSON and as CSV (the export is recorded); the system administrator's
dashboard reads desktops in use through a day. The uses are written as the console
writes them (vdi.uses); tests/web/test_idle_kick.py sees one made by a real console."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from tests.web.conftest import FakeHostBroker
from vdi import uses

TZ = ZoneInfo("Asia/Shanghai")


def local(day: int, hour: float) -> datetime:
    return datetime(2026, 11, day, tzinfo=TZ) + timedelta(hours=hour)


def test_metering_per_office_and_pool(fake: FakeHostBroker) -> None:
    broker = fake.broker
    clerk = broker.login("zhangsan")
    desktop = clerk.connect_when_ready("window")["desktop"]
    db = broker.runtime.db
    # a morning, and an evening past midnight, of Nov 3 (the district's days)
    with db.begin() as s:
        uses.begin(s, desktop, "zhangsan", local(3, 9))
        uses.seen(s, [desktop], local(3, 11.49))  # the consoles' heartbeat
        uses.end(s, desktop, local(3, 11.5))
        uses.begin(s, desktop, "zhangsan", local(3, 23))
        uses.seen(s, [desktop], local(4, 0.49))
        uses.end(s, desktop, local(4, 0.5))
    admin = broker.login("zhaoliu")
    auditor = broker.login("zhengshi")

    r = auditor.client.get("/api/admin/metering",
                           params={"from": "2026-11-03", "to": "2026-11-03", "by": "pool"})
    assert r.status_code == 200, r.text
    data = r.json()
    assert (data["from"], data["to"], data["by"]) == ("2026-11-03", "2026-11-03", "pool")
    [line] = data["lines"]
    assert (line["key"], line["sessions"], line["hours"], line["clerks"]) == (
        "window", 2, 3.5, 1)
    assert data["total"] == {"sessions": 2, "hours": 3.5}
    assert data["daily"] == [{"day": "2026-11-03", "hours": {"window": 3.5}}]
    two_days = admin.client.get("/api/admin/metering", params={
        "from": "2026-11-03", "to": "2026-11-04", "by": "office"}).json()
    assert [(x["key"], x["hours"]) for x in two_days["lines"]] == [("", 4.0)]
    assert [d["day"] for d in two_days["daily"]] == ["2026-11-03", "2026-11-04"]

    exported = auditor.client.get("/api/admin/metering.csv", params={
        "from": "2026-11-03", "to": "2026-11-04", "by": "pool"})
    assert exported.status_code == 200
    assert "metering-pool-2026-11-03-2026-11-04.csv" in exported.headers[
        "content-disposition"]
    rows = list(csv.DictReader(io.StringIO(exported.content.decode("utf-8")[1:])))
    assert [(x["pool"], x["sessions"], x["desktop_hours"]) for x in rows] == [
        ("window", "2", "4.00"), ("total", "2", "4.00")]
    [noted] = broker.audit(action="metering-export")
    assert (noted.actor, noted.outcome) == ("zhengshi", "ok")
    assert noted.detail == "2026-11-03..2026-11-04 by pool: 1 lines"

    for bad in ({"from": "2026-11-05", "to": "2026-11-04"}, {"by": "clerk"},
                {"from": "³"}):
        refused = auditor.client.get("/api/admin/metering", params=bad)
        assert refused.status_code == 400 and refused.json()["message"], bad

    day = admin.client.get("/api/admin/usage",
                           params={"day": "2026-11-03", "step_s": "1800"}).json()
    assert day["step_s"] == 1800 and len(day["points"]) == 48
    counts = {p["at"]: p["in_use"] for p in day["points"]}
    assert counts[local(3, 10).isoformat()] == 1 and counts[local(3, 12).isoformat()] == 0
    assert admin.client.get("/api/admin/usage", params={"step_s": "7"}).status_code == 400
    today = admin.client.get("/api/admin/usage").json()
    assert today["step_s"] == 300 and today["points"], "today, up to now"
