"""The helpdesk finds a clerk of the offices it serves and sees their desktops and the
last days' events (real app, real slapd, fake host). A clerk of another office, and a
desktop in another office's pool, are answered exactly as ones that do not exist; a
helpdesk member who serves no office finds no one; every look is recorded."""

from __future__ import annotations

from dataclasses import replace

from broker.offices import OfficeStore
from tests.web.conftest import GROUP_BASE, HELPDESK_GROUP, FakeHostBroker
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

    # 李四 is 西街's: the same answer as for no one at all
    other = helpdesk.client.get("/api/helpdesk/clerks/lisi")
    nobody = helpdesk.client.get("/api/helpdesk/clerks/nobody-here")
    assert other.status_code == nobody.status_code == 404
    assert other.json() == nobody.json() and other.json()["error"] == "clerk_not_found"

    # the pool becomes 西街's: 张三's desktop there is out of the helpdesk's sight
    catalog = Catalog(fake.broker.runtime.db)
    catalog.save_pool(replace(catalog.pool("window"), office="xijie"))  # type: ignore[arg-type]
    assert helpdesk.client.get("/api/helpdesk/clerks/zhangsan").json()["desktops"] == []

    # a district-level administrator serves every office
    admin = fake.broker.login("zhaoliu")
    assert names(admin.client.get("/api/helpdesk/clerks", params={"q": "li"})) == ["lisi"]
    assert helpdesk.client.get("/api/helpdesk/clerks", params={"q": ""}).status_code == 400

    looks = fake.broker.audit(action="helpdesk-view")
    assert [(a.actor, a.target) for a in looks] == [("wangwu", "zhangsan")] * 2
    assert len(fake.broker.audit(action="helpdesk-search")) == 4
