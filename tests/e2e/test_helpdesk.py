"""The phone call, end to end on the running broker, real libvirtd guests, real slapd
and Chromium: a clerk of 东街 works at their desktop; the helpdesk member who serves
东街 finds them by their Chinese name, sees their desktop's live screen, and sends a
message that appears on the clerk's desktop page until the clerk says OK. Screenshots of
the page with the message are kept (test-artifacts/)."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Browser

from pools.screens import png_size
from tests.e2e.conftest import ARTIFACTS, HELPDESK_GROUP, Broker
from tests.e2e.test_clerk_desktop import sign_in
from tests.e2e.test_pool_kinds import open_desktop

pytestmark = pytest.mark.e2e

TEXT = "您好，服务台五分钟后为您重启桌面，请先保存工作。"


def helpdesk_client(broker: Broker) -> tuple[httpx.Client, str]:
    c = httpx.Client(base_url=broker.url, headers={"Origin": broker.url}, timeout=60)
    r = c.post("/api/session", json={"username": "wangwu", "password": "demo2026"})
    assert r.status_code == 200, r.text
    return c, r.json()["csrf"]


@pytest.mark.parametrize("lang, banner", [("zh_CN", "服务台（王五）留言："),
                                          ("en", "Message from the helpdesk (王五):")])
def test_helpdesk_finds_the_clerk_sees_the_screen_and_messages_them(
        broker: Broker, browser: Browser, lang: str, banner: str) -> None:
    broker.vdi("office-set", "dongjie", "--name", "东街街道办", "--clerk-group",
               "cn=dongjie-window,ou=groups,dc=district,dc=example", "--helpdesk-group",
               HELPDESK_GROUP)
    page = browser.new_context(locale="zh-CN" if lang == "zh_CN" else "en-US").new_page()
    sign_in(page, broker.url, "zhangsan", "demo2026", lang)
    desktop_id = open_desktop(page, broker, "window")

    helpdesk, csrf = helpdesk_client(broker)
    found = helpdesk.get("/api/helpdesk/clerks", params={"q": "张三"}).json()["clerks"]
    assert [c["username"] for c in found] == ["zhangsan"]
    view = helpdesk.get("/api/helpdesk/clerks/zhangsan").json()
    assert desktop_id in [d["id"] for d in view["desktops"]]
    shot = helpdesk.get(f"/api/helpdesk/desktops/{desktop_id}/screen")
    assert shot.status_code == 200 and png_size(shot.content)[0] >= 640
    sent = helpdesk.post(f"/api/helpdesk/desktops/{desktop_id}/messages",
                         json={"text": TEXT}, headers={"X-CSRF-Token": csrf})
    assert sent.status_code == 200, sent.text

    box = page.locator("#helpdesk-message")
    box.wait_for(state="visible", timeout=20_000)  # the page asks every 5 s
    assert page.locator("#helpdesk-from").inner_text() == banner
    assert page.locator("#helpdesk-text").inner_text() == TEXT
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"e2e-helpdesk-message-{lang}.png"))
    page.click("#helpdesk-ok")
    box.wait_for(state="hidden", timeout=5_000)
    status = page.evaluate("async () => (await (await fetch('/api/pools/window/status', "
                           "{credentials: 'same-origin'})).json()).message")
    assert status is None  # acknowledged: it does not come back
    helpdesk.close()
    page.context.close()
