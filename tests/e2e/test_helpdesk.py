"""The phone call, end to end on the running broker, real libvirtd guests, real slapd
and Chromium: a clerk of 东街 works at their desktop; the helpdesk member who serves
东街 opens the helpdesk console from their start page, finds the clerk by their Chinese
name, sees the desktop's live screen, and sends a message that appears on the clerk's
desktop page until the clerk says OK. Screenshots of both pages are kept
(test-artifacts/), in zh-CN and English."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser

from tests.e2e.conftest import ARTIFACTS, HELPDESK_GROUP, Broker
from tests.e2e.test_clerk_desktop import sign_in
from tests.e2e.test_pool_kinds import open_desktop

pytestmark = pytest.mark.e2e

TEXT = "您好，服务台五分钟后为您重启桌面，请先保存工作。"
LABELS = {"zh_CN": ("服务台控制台", "服务台（王五）留言：", "留言已发送。"),
          "en": ("Helpdesk console", "Message from the helpdesk (王五):", "Message sent.")}


@pytest.mark.parametrize("lang", ["zh_CN", "en"])
def test_helpdesk_finds_the_clerk_sees_the_screen_and_messages_them(
        broker: Broker, browser: Browser, lang: str) -> None:
    console_link, banner, sent = LABELS[lang]
    broker.vdi("office-set", "dongjie", "--name", "东街街道办", "--clerk-group",
               "cn=dongjie-window,ou=groups,dc=district,dc=example", "--helpdesk-group",
               HELPDESK_GROUP)
    locale = "zh-CN" if lang == "zh_CN" else "en-US"
    clerk = browser.new_context(locale=locale).new_page()
    sign_in(clerk, broker.url, "zhangsan", "demo2026", lang)
    desktop_id = open_desktop(clerk, broker, "window")

    helpdesk = browser.new_context(locale=locale, viewport={"width": 1280, "height": 900}
                                   ).new_page()
    sign_in(helpdesk, broker.url, "wangwu", "demo2026", lang)
    helpdesk.click(f"text={console_link}")
    helpdesk.wait_for_url(f"{broker.url}/helpdesk")
    helpdesk.fill("#q", "张三")
    helpdesk.click("#find button[type=submit]")
    helpdesk.click("text=张三 (zhangsan)")
    card = helpdesk.locator(".desktop-card", has_text=desktop_id)
    card.wait_for(state="visible", timeout=10_000)
    # the live screen: a PNG of the guest's screen, loaded into the page
    helpdesk.wait_for_function(
        "() => [...document.querySelectorAll('img.shot')].some(i => i.naturalWidth >= 640)",
        timeout=20_000)
    assert helpdesk.locator("#events tr").count() >= 1
    card.locator("textarea").fill(TEXT)
    card.locator("form.send button").click()
    card.locator(".result", has_text=sent).wait_for(timeout=10_000)
    ARTIFACTS.mkdir(exist_ok=True)
    helpdesk.screenshot(path=str(ARTIFACTS / f"e2e-helpdesk-console-{lang}.png"))

    box = clerk.locator("#helpdesk-message")
    box.wait_for(state="visible", timeout=20_000)  # the page asks every 5 s
    assert clerk.locator("#helpdesk-from").inner_text() == banner
    assert clerk.locator("#helpdesk-text").inner_text() == TEXT
    clerk.screenshot(path=str(ARTIFACTS / f"e2e-helpdesk-message-{lang}.png"))
    clerk.click("#helpdesk-ok")
    box.wait_for(state="hidden", timeout=5_000)
    status = clerk.evaluate("async () => (await (await fetch('/api/pools/window/status', "
                            "{credentials: 'same-origin'})).json()).message")
    assert status is None  # acknowledged: it does not come back
    helpdesk.context.close()
    clerk.context.close()
