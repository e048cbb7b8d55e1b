"""The helpdesk finds a clerk of the offices it serves and sees their desktops, the
last days' events and the screen of a desktop in use, and reboots, logs off or resets
it with a reason (real app, real slapd, fake host). A clerk of another office, and a
desktop in another office's pool, are answered exactly as ones that do not exist; a
helpdesk member who serves no office finds no one; every look and act is recorded."""

from __future__ import annotations

from dataclasses import replace

import httpx

from broker.offices import OfficeStore
from harness.ldap_server import GROUP_BASE
from pools.screens import png_size
from tests.web.conftest import HELPDESK_GROUP, FakeHostBroker
from vdi.catalog import Catalog
from vdi.domain import Office

EAST = Office("dongjie", "东街街道办", (f"cn=dongjie-window,{GROUP_BASE}",), (HELPDESK_GROUP,))
WEST = Office("xijie", "西街街道办", (f"cn=xijie-window,{GROUP_BASE}",),
              (f"cn=hd-west,{GROUP_BASE}",))


def names(r: object) -> list[str]:
    return [c["username"] for c in r.json()["clerks"]]  # type: ignore[attr-defined]


def test_helpdesk_sees_the_clerks_of_its_offices_only(fake: FakeHostBroker) -> None:
    helpdesk = fake.broker.login("wangwu")  # in the helpdesk group
    # no office yet: the helpdesk serves no one
    r = helpdesk.client.get("/api/helpdesk/clerks", params={"q": "张"})
    assert r.status_code == 200 and names(r) == []

    store = OfficeStore(fake.broker.runtime.db)
    store.save(EAST)
    store.save(WEST)
    clerk = fake.broker.login("zhangsan")  # 张三, 东街 (dongjie-window)
    assert clerk.connect_when_ready("window")["desktop"]

    assert names(helpdesk.client.get("/api/helpdesk/clerks", params={"q": "张"})) == [
        "zhangsan"]
    assert names(helpdesk.client.get("/api/helpdesk/clerks", params={"q": "li"})) == []
    view = helpdesk.client.get("/api/helpdesk/clerks/zhangsan").json()
    assert view["clerk"] == {"username": "zhangsan", "name": "张三", "offices": ["dongjie"]}
    [desktop] = view["desktops"]
    assert desktop["pool"] == "window" and desktop["state"] == "assigned"
    whats = [e["what"] for e in view["events"]]
    assert "login" in whats and "connect" in whats
    assert all(e["source"] for e in view["events"])

    # the clerk's screen, refreshed: a PNG each time, the look recorded once
    for _ in range(2):
        shot = helpdesk.client.get(f"/api/helpdesk/desktops/{desktop['id']}/screen")
        assert shot.status_code == 200 and shot.headers["content-type"] == "image/png"
        assert png_size(shot.content) == (4, 2)
    missing = helpdesk.client.get("/api/helpdesk/desktops/window-nothere/screen")
    assert missing.status_code == 404 and missing.json()["error"] == "desktop_not_found"

    # 李四 is 西街's: the same answer as for no one at all
    other = helpdesk.client.get("/api/helpdesk/clerks/lisi")
    nobody = helpdesk.client.get("/api/helpdesk/clerks/nobody-here")
    assert other.status_code == nobody.status_code == 404
    assert other.json() == nobody.json() and other.json()["error"] == "clerk_not_found"

    # the pool becomes 西街's: 张三's desktop there is out of the helpdesk's sight
    catalog = Catalog(fake.broker.runtime.db)
    window = catalog.pool("window")
    assert window is not None
    catalog.save_pool(replace(window, office="xijie"))
    assert helpdesk.client.get("/api/helpdesk/clerks/zhangsan").json()["desktops"] == []
    hidden = helpdesk.client.get(f"/api/helpdesk/desktops/{desktop['id']}/screen")
    assert hidden.status_code == 404 and hidden.json() == missing.json()

    # a district-level administrator serves every office
    admin = fake.broker.login("zhaoliu")
    assert names(admin.client.get("/api/helpdesk/clerks", params={"q": "li"})) == ["lisi"]
    assert helpdesk.client.get("/api/helpdesk/clerks", params={"q": ""}).status_code == 400

    assert [a.target for a in fake.broker.audit(action="helpdesk-screen")] == [desktop["id"]]
    looks = fake.broker.audit(action="helpdesk-view")
    assert [(a.actor, a.target) for a in looks] == [("wangwu", "zhangsan")] * 2
    assert len(fake.broker.audit(action="helpdesk-search")) == 4


def test_helpdesk_acts_on_a_served_desktop_with_a_reason(fake: FakeHostBroker) -> None:
    OfficeStore(fake.broker.runtime.db).save(EAST)
    clerk = fake.broker.login("zhangsan")
    desktop = clerk.connect_when_ready("window")["desktop"]
    helpdesk = fake.broker.login("wangwu")

    def act(action: str, reason: str = "屏幕卡住，电话报修") -> httpx.Response:
        return helpdesk.client.post(f"/api/helpdesk/desktops/{desktop}/actions",
                                    json={"action": action, "reason": reason},
                                    headers={"X-CSRF-Token": helpdesk.csrf})

    assert act("reboot", "ok").status_code == 400  # a reason says why
    assert act("format-disk").status_code == 400
    r = act("reboot")
    assert r.status_code == 200 and r.json()["done"] == "rebooted", r.text
    held = Catalog(fake.broker.runtime.db).desktop(desktop)
    assert held is not None and fake.host.resets == [held.domain_name]
    r = act("reset")
    assert r.status_code == 200 and "made afresh" in r.json()["done"]
    # the desktop is no longer in use by the clerk: nothing more to do to it
    assert act("reboot").status_code == 404
    [reboot] = fake.broker.audit(action="helpdesk-reboot")
    assert reboot.actor == "wangwu" and reboot.target == desktop
    assert "reason: 屏幕卡住，电话报修" in reboot.detail and "clerk zhangsan" in reboot.detail
    assert len(fake.broker.audit(action="helpdesk-reset")) == 1


def test_a_message_from_the_helpdesk_waits_on_the_clerks_page_until_seen(
        fake: FakeHostBroker) -> None:
    OfficeStore(fake.broker.runtime.db).save(EAST)
    clerk = fake.broker.login("zhangsan")
    desktop = clerk.connect_when_ready("window")["desktop"]
    helpdesk = fake.broker.login("wangwu")
    send = f"/api/helpdesk/desktops/{desktop}/messages"
    csrf = {"X-CSRF-Token": helpdesk.csrf}
    assert helpdesk.client.post(send, json={"text": ""}, headers=csrf).status_code == 400
    assert helpdesk.client.post(send, json={"text": "x" * 501}, headers=csrf
                                ).status_code == 400
    r = helpdesk.client.post(send, json={"text": "五分钟后重启您的桌面，请先保存。"},
                             headers=csrf)
    assert r.status_code == 200, r.text

    status = clerk.client.get("/api/pools/window/status").json()
    message = status["message"]
    assert message["text"] == "五分钟后重启您的桌面，请先保存。" and message["from"] == "王五"
    # another clerk cannot acknowledge it for them
    other = fake.broker.login("sunqi")
    seen = f"/api/pools/window/messages/{message['id']}/seen"
    refused = other.client.post(seen, headers={"X-CSRF-Token": other.csrf})
    assert refused.status_code == 404 and refused.json()["error"] == "no_message"
    assert clerk.client.post(seen, headers={"X-CSRF-Token": clerk.csrf}).status_code == 200
    assert clerk.client.get("/api/pools/window/status").json()["message"] is None
    assert clerk.client.post(seen, headers={"X-CSRF-Token": clerk.csrf}).status_code == 404
    [sent] = fake.broker.audit(action="helpdesk-message")
    assert sent.actor == "wangwu" and "五分钟后重启" in sent.detail


def test_a_desktop_not_running_or_a_host_down_is_said_so(fake: FakeHostBroker) -> None:
    OfficeStore(fake.broker.runtime.db).save(EAST)
    clerk = fake.broker.login("zhangsan")
    desktop = clerk.connect_when_ready("window")["desktop"]
    helpdesk = fake.broker.login("wangwu")
    held = Catalog(fake.broker.runtime.db).desktop(desktop)
    assert held is not None
    fake.host.suspend_desktop(held.domain_name)  # as the idle policy suspends one
    shot = helpdesk.client.get(f"/api/helpdesk/desktops/{desktop}/screen")
    assert shot.status_code == 409 and shot.json()["error"] == "desktop_not_running"
    reboot = helpdesk.client.post(f"/api/helpdesk/desktops/{desktop}/actions",
                                  json={"action": "reboot", "reason": "屏幕卡住了"},
                                  headers={"X-CSRF-Token": helpdesk.csrf})
    assert reboot.status_code == 409
    fake.host.crash()
    down = helpdesk.client.get(f"/api/helpdesk/desktops/{desktop}/screen")
    assert down.status_code == 503 and down.json()["error"] == "host_unavailable"
