"""The idle policy over HTTP: a clerk's status and "I'm still here" for their own desktop
only, CSRF on the state change, the reclaims list for admins and helpdesk only (and each
look at it audited), bad input answered clearly. Real slapd, fake host."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from tests.web.conftest import FakeHostBroker
from vdi.domain import utc_now
from vdi.models import DesktopRow, ReclaimRow

pytestmark = pytest.mark.real


def test_status_and_still_here_are_the_clerks_own(fake: FakeHostBroker) -> None:
    b = fake.broker
    b.wait_ready("window")
    zhangsan = b.login("zhangsan")
    mine = zhangsan.connect_when_ready("window")["desktop"]
    now = utc_now()
    with b.runtime.db.begin() as s:
        s.execute(update(DesktopRow).where(DesktopRow.id == mine).values(
            warned_at=now, warning_deadline=now.replace(microsecond=0)))
    st = zhangsan.client.get("/api/pools/window/status").json()
    assert st["desktop"] == mine and st["warning"] is not None and st["notice"] is None
    # lisi (also staff) has no desktop in the pool: sees none of zhangsan's
    lisi = b.login("lisi")
    other = lisi.client.get("/api/pools/window/status").json()
    assert (other["desktop"], other["warning"]) == (None, None)
    assert lisi.client.post("/api/pools/window/still-here",
                            headers={"X-CSRF-Token": lisi.csrf}).status_code == 404
    # a pool the clerk is not entitled to is not there
    assert zhangsan.client.get("/api/pools/tools/status").status_code == 404
    # the state change needs the CSRF token
    assert zhangsan.client.post("/api/pools/window/still-here").status_code == 403
    r = zhangsan.client.post("/api/pools/window/still-here",
                             headers={"X-CSRF-Token": zhangsan.csrf})
    assert r.status_code == 200
    assert zhangsan.client.get("/api/pools/window/status").json()["warning"] is None


def test_reclaims_are_for_admins_and_helpdesk_and_each_look_is_audited(
        fake: FakeHostBroker) -> None:
    b = fake.broker
    now = utc_now()
    with b.runtime.db.begin() as s:
        s.add(ReclaimRow(at=now, desktop_id="window-x", pool_id="window", username="sunqi",
                         action="log_off", cause="idle", since=now, shift="office",
                         reason="no keyboard or mouse input for 32 min"))
    assert b.client().get("/api/admin/reclaims").status_code == 401
    assert b.login("zhangsan").client.get("/api/admin/reclaims").status_code == 403
    helpdesk = b.login("wangwu")
    listed = helpdesk.client.get("/api/admin/reclaims", params={"pool": "window"}).json()
    assert [(r["user"], r["action"], r["cause"]) for r in listed["reclaims"]] == [
        ("sunqi", "log_off", "idle")]
    [entry] = b.audit(action="reclaims-read")
    assert (entry.actor, entry.target) == ("wangwu", "pool=window user=*")
    admin = b.login("zhaoliu")
    for hours in ("nan", "inf", "-1", "soon", "100000"):
        r = admin.client.get("/api/admin/reclaims", params={"hours": hours})
        assert (r.status_code, r.json()["error"]) == (400, "bad_request"), hours
    assert admin.client.get("/api/admin/reclaims",
                            params={"user": "nobody"}).json() == {"reclaims": []}
