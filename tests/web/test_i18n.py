"""Languages: zh-CN first, English second, for pages and for API error messages."""

from __future__ import annotations

from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po

from harness.ldap_server import DEMO_PASSWORD
from tests.web.conftest import FakeHostBroker
from web import errors
from web.i18n import LANG_COOKIE, LOCALE_DIR, translations

pytestmark = pytest.mark.real

ZH_PO = LOCALE_DIR / "zh_CN" / "LC_MESSAGES" / "messages.po"
POT = LOCALE_DIR / "messages.pot"


def catalog(path: Path, locale: str | None = None) -> Catalog:
    with path.open("rb") as f:
        return read_po(f, locale=locale)


def zh(msgid: str) -> str:
    message = catalog(ZH_PO, "zh_CN").get(msgid)
    assert message is not None, f"{msgid!r} is not in {ZH_PO}"
    assert isinstance(message.string, str)
    return message.string


def test_sign_in_page_follows_accept_language(fake: FakeHostBroker) -> None:
    client = fake.broker.client()
    chinese = client.get("/", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"})
    assert chinese.status_code == 200
    assert "登录" in chinese.text and 'lang="zh-CN"' in chinese.text
    assert "Sign in" not in chinese.text
    english = client.get("/", headers={"Accept-Language": "en-US,en;q=0.9,zh;q=0.3"})
    assert "Sign in" in english.text and 'lang="en"' in english.text
    assert "登录" not in english.text
    default = client.get("/", headers={"Accept-Language": "fr"})
    assert "登录" in default.text  # zh-CN unless the browser asks for English


def test_lang_parameter_sets_the_cookie_that_later_wins(fake: FakeHostBroker) -> None:
    client = fake.broker.client()
    r = client.get("/?lang=en", headers={"Accept-Language": "zh-CN"})
    assert "Sign in" in r.text
    jar: SimpleCookie = SimpleCookie()
    jar.load(r.headers["set-cookie"])
    assert jar[LANG_COOKIE].value == "en"
    later = client.get("/", headers={"Accept-Language": "zh-CN"})  # the client sends the cookie
    assert "Sign in" in later.text and "登录" not in later.text
    back = client.get("/?lang=zh_CN", headers={"Accept-Language": "en"})
    assert "登录" in back.text
    bogus = fake.broker.client().get("/?lang=xx-evil", headers={"Accept-Language": "en"})
    assert "set-cookie" not in bogus.headers
    assert "Sign in" in bogus.text


def test_every_message_has_a_chinese_translation() -> None:
    zh_catalog = catalog(ZH_PO, "zh_CN")
    ids = [m.id for m in zh_catalog if m.id]
    assert len(ids) >= 20
    missing = [m.id for m in zh_catalog if m.id and (not m.string or m.fuzzy)]
    assert not missing, f"untranslated or fuzzy in {ZH_PO}: {missing}"
    template_ids = {m.id for m in catalog(POT) if m.id}
    assert template_ids <= set(ids), f"not in {ZH_PO}: {sorted(template_ids - set(ids))}"
    # the compiled catalog the server loads says the same as the .po file
    compiled = translations("zh_CN")
    stale = [m.id for m in zh_catalog if m.id and isinstance(m.id, str)
             and compiled.gettext(m.id) != m.string]
    assert not stale, f"messages.mo is older than messages.po for: {stale}"


def api_error_messages() -> set[str]:
    """Every message the API can answer with (web.errors' tables)."""
    return ({a.message for a in (*errors.ANSWERS.values(), *errors.ANSWERS_BY_CODE.values(),
                                 errors.UNKNOWN)} | set(errors.BAD_REQUEST_MESSAGES))


def test_every_api_error_message_is_translated() -> None:
    messages = api_error_messages()
    assert "Wrong username or password." in messages
    compiled = translations("zh_CN")
    untranslated = sorted(m for m in messages if compiled.gettext(m) == m)
    assert not untranslated, f"API messages without a zh_CN translation: {untranslated}"


def test_api_errors_come_in_the_request_language(fake: FakeHostBroker) -> None:
    client = fake.broker.client()
    body = {"username": "zhangsan", "password": DEMO_PASSWORD + "-wrong"}
    english = client.post("/api/session", json=body, headers={"Accept-Language": "en"})
    chinese = client.post("/api/session", json=body, headers={"Accept-Language": "zh-CN"})
    assert english.status_code == chinese.status_code == 401
    assert english.json()["message"] == "Wrong username or password."
    assert chinese.json()["message"] == zh("Wrong username or password.")
    assert english.json()["error"] == chinese.json()["error"] == "invalid_credentials"

    anonymous = fake.broker.client()
    assert anonymous.get("/api/pools?lang=en").json()["message"] == "Please sign in."
    assert anonymous.get("/api/pools", headers={"Accept-Language": "zh-CN"}).json()[
        "message"] == zh("Please sign in.")
    anonymous.cookies.set(LANG_COOKIE, "en")
    assert anonymous.get("/api/pools", headers={"Accept-Language": "zh-CN"}).json()[
        "message"] == "Please sign in."

    me = fake.broker.login("zhangsan")
    r = me.client.post("/api/pools/window/connect", headers={"Accept-Language": "zh-CN"})
    assert r.status_code == 403
    assert r.json()["message"] == zh("The request lacks a valid CSRF token.")
