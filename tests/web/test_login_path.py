"""The login path a clerk takes at opening time, over real HTTP against the real slapd:
sign in, list pools, connect. Each step does its database work in one trip to a
database thread (web/api.py), and the audit entries of a sign-in and a connect are
written in the same transaction as the session and the console token."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.web.conftest import FakeHostBroker
from vdi.domain import DesktopState
from vdi.models import SessionRow

pytestmark = pytest.mark.real


def test_sign_in_list_connect_writes_one_audit_entry_per_step(fake: FakeHostBroker) -> None:
    broker = fake.broker
    broker.wait_ready("window")
    me = broker.login("zhangsan")
    [login] = broker.audit(action="login")
    assert (login.actor, login.role, login.outcome, login.source) == (
        "zhangsan", "staff", "ok", "127.0.0.1")

    listed = me.client.get("/api/pools")
    assert listed.status_code == 200
    assert listed.json()["pools"] == [{"id": "window", "name": "窗口桌面", "kind": "floating",
                                       "protocol": "vnc", "desktop": None, "notice": None}]
    body = me.connect_when_ready("window")
    [connect] = broker.audit(action="connect")
    assert (connect.actor, connect.target, connect.outcome) == (
        "zhangsan", body["desktop"], "ok")
    assert [p["desktop"] for p in me.client.get("/api/pools").json()["pools"]] == [
        body["desktop"]]
    assigned = broker.desktops("window", (DesktopState.ASSIGNED,))
    assert [(d.id, d.assigned_user) for d in assigned] == [(body["desktop"], "zhangsan")]


def test_no_access_creates_no_session(fake: FakeHostBroker) -> None:
    r = fake.broker.client().post("/api/session",
                                  json={"username": "zhouba", "password": "demo2026"})
    assert r.status_code == 403, r.text
    with fake.broker.runtime.db() as s:
        assert s.scalars(select(SessionRow)).all() == []
    assert [(a.actor, a.outcome) for a in fake.broker.audit(action="login")] == [
        ("zhouba", "no_access")]


def test_connect_with_a_stale_cookie_or_no_csrf_changes_nothing(fake: FakeHostBroker) -> None:
    broker = fake.broker
    broker.wait_ready("window")
    me = broker.login("lisi")
    r = me.client.post("/api/pools/window/connect")  # no CSRF header
    assert r.status_code == 403 and r.json()["error"] == "csrf"
    assert me.logout().status_code == 200
    r = me.client.post("/api/pools/window/connect", headers={"X-CSRF-Token": me.csrf})
    assert r.status_code == 401 and r.json()["error"] == "not_signed_in"
    assert broker.desktops("window", (DesktopState.ASSIGNED,)) == []
    assert broker.audit(action="connect") == []
