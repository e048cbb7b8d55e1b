"""The API tokens page in headless Debian Chromium, in both languages, against the real
app (real slapd, fake host): the security administrator signs in, follows the link from
the start page, makes a token (the secret shown once, copied with the button, and it
works on the API), sees everyone's tokens, and revokes their own (it stops at once).
Screenshots go to test-artifacts/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from harness.browser import chromium
from harness.ldap_server import DEMO_PASSWORD
from tests.web.conftest import FakeHostBroker

pytestmark = [pytest.mark.real, pytest.mark.e2e]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TEXT = {"zh_CN": ("API 令牌", "创建令牌", "已复制。", "所有人的 API 令牌", "吊销"),
        "en": ("API tokens", "Make a token", "Copied.", "Everyone's API tokens", "Revoke")}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.mark.parametrize("lang", ["zh_CN", "en"])
def test_make_copy_use_and_revoke_a_token_in_the_console(
        fake: FakeHostBroker, browser: Browser, lang: str) -> None:
    b = fake.broker
    title, make, copied, everyone, revoke = TEXT[lang]
    other = b.login("zhaoliu")  # a system administrator's token, for everyone's list
    assert other.client.post("/api/tokens", json={"name": "nightly-report", "days": 7},
                             headers={"X-CSRF-Token": other.csrf}).status_code == 201

    context = browser.new_context(locale="zh-CN" if lang == "zh_CN" else "en-US",
                                  viewport={"width": 1200, "height": 820})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=b.url)
    page = context.new_page()
    try:
        page.goto(f"{b.url}/?lang={lang}")
        page.fill("#username", "wujiu")
        page.fill("#password", DEMO_PASSWORD)
        page.click("#login-button")
        page.get_by_role("link", name=title).click()
        expect(page.locator("h1")).to_have_text(title)
        expect(page.locator("#everyone tr")).to_have_count(1)
        expect(page.get_by_role("heading", name=everyone)).to_be_visible()

        page.fill("#token-name", "vdi 命令行" if lang == "zh_CN" else "vdi command line")
        page.fill("#token-days", "30")
        page.get_by_role("button", name=make).click()
        secret_box = page.locator("#secret")
        expect(secret_box).to_contain_text("vdi_")
        secret = secret_box.text_content() or ""
        assert len(secret) == 47, secret
        page.click("#copy")
        expect(page.locator("#copied")).to_have_text(copied)
        assert page.evaluate("navigator.clipboard.readText()") == secret
        expect(page.locator("#tokens tr")).to_have_count(1)
        expect(page.locator("#everyone tr")).to_have_count(2)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"web-api-tokens-{lang}.png"), full_page=True)

        api = b.client(origin=None, Authorization=f"Bearer {secret}")
        assert api.get("/api/security/tokens").status_code == 200
        page.reload()  # the secret is not shown again
        expect(page.locator("#created")).to_be_hidden()
        assert secret not in page.content()
        expect(page.locator("#tokens td.fingerprint")).to_have_count(1)
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("#tokens").get_by_role("button", name=revoke).click()
        expect(page.locator("#tokens tr")).to_have_count(0)
        r = api.get("/api/security/tokens")
        assert r.status_code == 401 and r.json()["error"] == "token_revoked"
    finally:
        context.close()
