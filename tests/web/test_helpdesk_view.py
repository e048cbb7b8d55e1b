"""The helpdesk's read-only view and its disconnect of a clerk's consoles, through the
API (real app, real slapd, fake host: the relay itself is tested against QEMU in
tests/e2e/test_helpdesk_view.py). A view is granted with a reason to a helpdesk member
who serves the clerk only, as a one-time websocket path bound to their session; its
start and end are recorded and the clerk's page says who is viewing while it is open.
A disconnect closes the clerk's consoles on every broker and their page says who did it
until they connect again."""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from broker.activity import TunnelRegistry
from broker.offices import OfficeStore
from broker.readonly_views import ViewStore
from broker.sessions import hash_secret
from broker.signals import ConsoleSignals
from tests.web.conftest import FakeHostBroker, SignedIn, wait_for
from tests.web.test_console import open_ws
from tests.web.test_helpdesk_api import EAST, WEST
from vdi.catalog import Catalog
from vdi.domain import utc_now
from vdi.models import AccessPolicyRow

REASON = "张三来电：屏幕卡住，先看一下"


def grant(helpdesk: SignedIn, desktop: str, reason: str = REASON) -> httpx.Response:
    return helpdesk.client.post(f"/api/helpdesk/desktops/{desktop}/view",
                                json={"reason": reason},
                                headers={"X-CSRF-Token": helpdesk.csrf})


def status(clerk: SignedIn) -> dict[str, object]:
    body = clerk.client.get("/api/pools/window/status").json()
    assert isinstance(body, dict)
    return body


def test_a_view_is_granted_to_the_clerks_helpdesk_only_with_a_reason(
        fake: FakeHostBroker) -> None:
    store = OfficeStore(fake.broker.runtime.db)
    store.save(EAST)
    store.save(WEST)
    clerk = fake.broker.login("zhangsan")  # 东街
    desktop = clerk.connect_when_ready("window")["desktop"]
    helpdesk = fake.broker.login("wangwu")  # serves 东街

    assert grant(helpdesk, desktop, "ok").status_code == 400  # a reason says why
    missing = grant(helpdesk, "window-nothere")
    assert missing.status_code == 404 and missing.json()["error"] == "desktop_not_found"
    r = grant(helpdesk, desktop)
    assert r.status_code == 200, r.text
    path = r.json()["view"]
    assert path.startswith("/helpdesk/view/") and r.json()["expires_in"] > 0

    # another session of the same person, and a clerk, cannot open it
    other = fake.broker.login("wangwu")
    for cookie in (other.cookie_header, clerk.cookie_header, None):
        with pytest.raises(InvalidStatus) as refused:
            open_ws(fake.broker, path, cookie=cookie).close()
        assert refused.value.response.status_code == 403
    # the right session opens it once (the fake host has no VNC server behind it: the
    # view ends at once, recorded with why)
    ws = open_ws(fake.broker, path, cookie=helpdesk.cookie_header)
    ws.close()
    with pytest.raises(InvalidStatus):
        open_ws(fake.broker, path, cookie=helpdesk.cookie_header).close()
    wait_for(lambda: bool(fake.broker.audit(action="helpdesk-watch-end")), 10, "the end")
    [start] = fake.broker.audit(action="helpdesk-watch-start", outcome="ok")
    assert start.actor == "wangwu" and start.target == desktop
    assert f"reason: {REASON}" in start.detail and "clerk zhangsan" in start.detail
    [end] = fake.broker.audit(action="helpdesk-watch-end")
    assert end.actor == "wangwu" and end.outcome == "closed"
    assert len(fake.broker.audit(action="helpdesk-watch-start", outcome="denied")) == 4

    # 西街's helpdesk (and a clerk) get the answer of a desktop that does not exist
    catalog = Catalog(fake.broker.runtime.db)
    window = catalog.pool("window")
    assert window is not None
    catalog.save_pool(replace(window, office="xijie"))
    hidden = grant(helpdesk, desktop)
    assert hidden.status_code == 404 and hidden.json() == missing.json()
    assert grant(clerk, desktop).status_code == 403


def test_the_clerks_page_says_who_is_viewing_while_the_view_is_open(
        fake: FakeHostBroker) -> None:
    OfficeStore(fake.broker.runtime.db).save(EAST)
    clerk = fake.broker.login("zhangsan")
    desktop = clerk.connect_when_ready("window")["desktop"]
    helpdesk = fake.broker.login("wangwu")
    assert status(clerk)["viewers"] == []
    token = grant(helpdesk, desktop).json()["view"].rsplit("/", 1)[1]
    views = ViewStore(fake.broker.runtime.db)
    assert status(clerk)["viewers"] == []  # granted, not open yet
    assert views.open(token, hash_secret(clerk.cookie)) is None  # not the clerk's to open
    row = views.open(token, hash_secret(helpdesk.cookie))
    assert row is not None and row.clerk == "zhangsan" and row.reason == REASON
    assert views.open(token, hash_secret(helpdesk.cookie)) is None  # once
    assert status(clerk)["viewers"] == [{"name": "王五"}]
    views.close(row.id)
    assert status(clerk)["viewers"] == []


def test_a_disconnect_closes_the_clerks_consoles_everywhere_and_their_page_says_so(
        fake: FakeHostBroker) -> None:
    OfficeStore(fake.broker.runtime.db).save(EAST)
    clerk = fake.broker.login("zhangsan")
    desktop = clerk.connect_when_ready("window")["desktop"]
    helpdesk = fake.broker.login("wangwu")
    runtime = fake.broker.runtime
    # a console of the clerk here, and one through another broker (its own registry)
    here_closed: list[str] = []
    there = TunnelRegistry(4)
    here = runtime.tunnels.open(username="zhangsan", session_hash=hash_secret(clerk.cookie),
                                desktop_id=desktop, close=lambda: here_closed.append("x"))
    far = there.open(username="zhangsan", session_hash=hash_secret(clerk.cookie),
                     desktop_id=desktop, close=lambda: None)
    assert ConsoleSignals(runtime.db, there, runtime.sessions, flush_s=1).flush() == []

    def act(reason: str) -> httpx.Response:
        return helpdesk.client.post(f"/api/helpdesk/desktops/{desktop}/actions",
                                    json={"action": "disconnect", "reason": reason},
                                    headers={"X-CSRF-Token": helpdesk.csrf})

    assert act("x").status_code == 400
    r = act("张三说画面卡住，断开重连试试")
    assert r.status_code == 200 and r.json()["done"].startswith("disconnected"), r.text
    assert here_closed == ["x"] and here.closed_because == "helpdesk"
    runtime.tunnels.closed(here)
    assert ConsoleSignals(runtime.db, there, runtime.sessions, flush_s=1).flush() == [
        (far, "helpdesk")]
    # the desktop stays the clerk's and running; their page says who disconnected them
    held = Catalog(runtime.db).desktop(desktop)
    assert held is not None and held.assigned_user == "zhangsan"
    gone = status(clerk)["disconnected"]
    assert isinstance(gone, dict) and gone["by"] == "王五"
    [record] = fake.broker.audit(action="helpdesk-disconnect")
    assert record.actor == "wangwu" and record.target == desktop
    assert "reason: 张三说画面卡住，断开重连试试" in record.detail
    # connecting again: the news is old, the same desktop, and new consoles stay open
    assert clerk.connect_when_ready("window")["desktop"] == desktop
    assert status(clerk)["disconnected"] is None
    again = there.open(username="zhangsan", session_hash=hash_secret(clerk.cookie),
                       desktop_id=desktop, close=lambda: None)
    assert (again, "helpdesk") not in ConsoleSignals(runtime.db, there, runtime.sessions,
                                                     flush_s=1).flush()


def test_a_view_opens_only_from_the_admin_networks(fake: FakeHostBroker) -> None:
    OfficeStore(fake.broker.runtime.db).save(EAST)
    clerk = fake.broker.login("zhangsan")
    desktop = clerk.connect_when_ready("window")["desktop"]
    helpdesk = fake.broker.login("wangwu")
    path = grant(helpdesk, desktop).json()["view"]
    # the access policy now admits the helpdesk from 10.20.0.0/16 only (written as a
    # security administrator elsewhere would have; this broker reads it at once)
    api = fake.broker.runtime.api
    assert api is not None
    with fake.broker.runtime.db.begin() as s:
        s.add(AccessPolicyRow(id=1, data={"admin_networks": ["10.20.0.0/16"]}, version=1,
                              updated_at=utc_now(), updated_by="wujiu"))
    api.policy.load()
    with pytest.raises(InvalidStatus) as refused:
        open_ws(fake.broker, path, cookie=helpdesk.cookie_header).close()
    assert refused.value.response.status_code == 403
    [noted] = fake.broker.audit(action="network-refused")
    assert (noted.actor, noted.target) == ("wangwu", "/helpdesk/view")
    assert not fake.broker.audit(action="helpdesk-watch-start", outcome="ok")
    # the console page sends them back to their start page, which has no link to it
    page = helpdesk.client.get("/helpdesk", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/"
    start = helpdesk.client.get("/")
    assert start.status_code == 200 and 'href="/helpdesk"' not in start.text
