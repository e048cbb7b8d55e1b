"""The security administrator's sessions page, end to end on the running broker (real
slapd, Chromium): a clerk is signed in; the security administrator opens "who is signed
in" from their start page, finds the clerk by account, ends the session with a reason;
the clerk's next request finds them signed out and the end is recorded with the reason.
Screenshots in zh-CN and English (test-artifacts/)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, Dialog

from tests.e2e.conftest import ARTIFACTS, Broker
from tests.e2e.test_clerk_desktop import sign_in

pytestmark = pytest.mark.e2e

LABELS = {"zh_CN": ("在线会话", "结束会话", "办事员", "已结束 zhangsan 的会话。"),
          "en": ("Who is signed in", "End session", "Clerk",
                 "The session of zhangsan was ended.")}
REASON = "账号疑似被他人使用，先行下线"


@pytest.mark.parametrize("lang", ["zh_CN", "en"])
def test_the_security_administrator_ends_a_clerks_session(
        broker: Broker, browser: Browser, lang: str) -> None:
    link, end_label, clerk_role, ended = LABELS[lang]
    locale = "zh-CN" if lang == "zh_CN" else "en-US"
    clerk = browser.new_context(locale=locale).new_page()
    sign_in(clerk, broker.url, "zhangsan", "demo2026", lang)

    page = browser.new_context(locale=locale, viewport={"width": 1366, "height": 768}
                               ).new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    sign_in(page, broker.url, "wujiu", "demo2026", lang)
    page.click(f"text={link}")
    page.wait_for_url(f"{broker.url}/security")
    page.fill("#filter", "zhangsan")
    row = page.locator("#sessions tbody tr", has_text="zhangsan")
    row.first.wait_for(timeout=10_000)
    assert clerk_role in row.first.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"e2e-security-sessions-{lang}.png"))

    def answer(dialog: Dialog) -> None:
        assert "zhangsan" in dialog.message
        dialog.accept(REASON)
    page.once("dialog", answer)
    row.first.locator("button", has_text=end_label).click()  # the newest: this clerk's
    page.locator("#result", has_text=ended).wait_for(timeout=10_000)
    # the clerk's browser asks again with its cookie (its page may be navigating away)
    status = clerk.request.get(f"{broker.url}/api/pools").status
    assert status == 401, "the clerk is signed out"

    # the access policy: the admin networks, saved with a reason, version 1
    page.fill("#policy textarea[name=admin_networks]", "127.0.0.0/8\n10.20.0.0/16")
    page.fill("#policy input[name=session_idle_s]", "900")
    page.fill("#policy input[name=reason]", "等保整改：管理页面仅限本机与管理网段")
    page.click("#policy button[type=submit]")
    page.locator("#policy-result.intact").wait_for(timeout=10_000)
    assert "wujiu" in page.locator("#policy-version").inner_text()
    page.screenshot(path=str(ARTIFACTS / f"e2e-security-policy-{lang}.png"), full_page=True)
    policy = page.evaluate("async () => (await (await fetch('/api/security/policy', "
                           "{credentials: 'same-origin'})).json()).policy")
    assert policy["admin_networks"] == ["127.0.0.0/8", "10.20.0.0/16"]
    assert policy["session_idle_s"] == 900
    assert not errors, errors
    page.context.close()
    clerk.context.close()
