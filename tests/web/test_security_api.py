"""The security administrator sees who is signed in, from where and using which desktop,
and ends a session with a reason: the user's next request finds them signed out, their
console grants are gone, and the end is recorded (real app, real slapd, fake host)."""

from __future__ import annotations

from tests.web.conftest import FakeHostBroker
from web.access import cookie_name


def test_the_security_administrator_ends_a_clerks_session(fake: FakeHostBroker) -> None:
    clerk = fake.broker.login("zhangsan")
    desktop = clerk.connect_when_ready("window")["desktop"]
    security = fake.broker.login("wujiu")
    listed = security.client.get("/api/security/sessions")
    assert listed.status_code == 200, listed.text
    mine = [s for s in listed.json()["sessions"] if s["username"] == "zhangsan"]
    assert len(mine) == 1 and mine[0]["desktops"] == [desktop]
    assert mine[0]["name"] == "张三" and mine[0]["source"] == "127.0.0.1"
    handle = mine[0]["handle"]
    assert len(handle) == 16
    # the handle signs no one in: not as the cookie, nor as the start of one
    for value in (handle, handle * 4):
        stranger = fake.broker.client()
        stranger.cookies.set(cookie_name(fake.broker.settings), value)
        assert stranger.get("/api/pools").status_code == 401

    end = f"/api/security/sessions/{handle}/end"
    csrf = {"X-CSRF-Token": security.csrf}
    assert security.client.post(end, json={"reason": "x"}, headers=csrf).status_code == 400
    r = security.client.post(end, json={"reason": "账号疑似被他人使用"}, headers=csrf)
    assert r.status_code == 200 and r.json() == {"ended": "zhangsan"}, r.text
    assert clerk.client.get("/api/pools").status_code == 401
    again = security.client.post(end, json={"reason": "账号疑似被他人使用"}, headers=csrf)
    assert again.status_code == 404 and again.json()["error"] == "session_not_found"
    bogus = security.client.post("/api/security/sessions/zz/end",
                                 json={"reason": "no such one"}, headers=csrf)
    assert bogus.status_code == 404
    [ended] = [a for a in fake.broker.audit(action="session-end") if a.actor == "wujiu"]
    assert ended.target == "zhangsan" and "reason: 账号疑似被他人使用" in ended.detail
    assert fake.broker.audit(action="sessions-read")[0].actor == "wujiu"
