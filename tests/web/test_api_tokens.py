"""Personal API tokens against the real app (real slapd, fake host): a token made in the
console works on the API with its owner's roles and no CSRF token, exactly as the
role-by-route table grants them; it stops when revoked, when expired and when its owner
leaves the group that gave the role; it opens no page and no console, cannot make
another token, and a bad one never falls back to the session cookie beside it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from broker.sessions import hash_secret
from harness.ldap_server import GROUP_BASE, USER_BASE, SlapdServer
from pools.fake_hypervisor import FakeHypervisor
from tests.web.conftest import (
    FakeHostBroker,
    RunningBroker,
    SignedIn,
    start_broker,
    wait_for,
    write_fake_image,
)
from tests.web.test_access import TABLE, USERS
from vdi.domain import utc_now
from vdi.models import ApiTokenRow

pytestmark = pytest.mark.real

# routes a token may not stand in for the browser's session on (each says why in web/)
BROWSER_ONLY = {("POST", "/api/session"), ("DELETE", "/api/session"),
                ("POST", "/api/pools/{pool}/connect"), ("POST", "/api/tokens"),
                # what a leaked script token must never do: end sessions, rewrite the
                # access policy, revoke others' tokens; and a view opens in a browser
                ("POST", "/api/security/sessions/{handle}/end"),
                ("PUT", "/api/security/policy"),
                ("POST", "/api/security/tokens/{token_id}/revoke"),
                ("POST", "/api/helpdesk/desktops/{desktop_id}/view")}


def make_token(me: SignedIn, name: str = "script", days: int = 30) -> dict[str, Any]:
    r = me.client.post("/api/tokens", json={"name": name, "days": days},
                       headers={"X-CSRF-Token": me.csrf})
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    body: dict[str, Any] = r.json()
    return body


def bearer(broker: RunningBroker, secret: str) -> httpx.Client:
    """A client with the token and nothing else: no cookie, no Origin, no CSRF token."""
    return broker.client(origin=None, Authorization=f"Bearer {secret}")


def concrete(path: str) -> str:
    return (path.replace("{pool}", "window").replace("{import_id}", "1")
            .replace("{username}", "zhangsan").replace("{desktop_id}", "window-0")
            .replace("{message_id}", "1").replace("{handle}", "0" * 16)
            .replace("{token_id}", "999999")
            + ("?q=zhang" if path == "/api/helpdesk/clerks" else ""))


@pytest.mark.parametrize("who", ["helpdesk", "sysadmin", "secadmin", "auditadmin"])
def test_a_token_gets_what_the_table_grants_its_owner_and_no_page(
        fake: FakeHostBroker, who: str) -> None:
    b = fake.broker
    secret = make_token(b.login(USERS[who]))["secret"]
    c = bearer(b, secret)
    for (method, path), (_, _, _, may) in TABLE.items():
        if method in ("WS", "MOUNT") or path.startswith("/static/"):
            continue
        r = c.request(method, concrete(path), follow_redirects=False)
        error = r.json().get("error") if r.headers.get("content-type", "").startswith(
            "application/json") else None
        where = f"{who} {method} {path}: {r.status_code} {r.text[:200]}"
        if not path.startswith(("/api/", "/healthz")) or (method, path) in BROWSER_ONLY:
            assert (r.status_code, error) == (403, "bearer_not_here"), where
        elif may[who]:
            assert r.status_code not in (401, 403), where
        else:
            assert (r.status_code, error) == (403, "forbidden"), where
    me = c.get("/api/session").json()
    assert me["user"]["username"] == USERS[who] and "csrf" not in me
    assert me["token"]["name"] == "script"


def test_a_token_stops_when_revoked_or_expired_and_each_step_is_recorded(
        fake: FakeHostBroker) -> None:
    b = fake.broker
    me = b.login("zhengshi")  # the audit administrator
    first, second = make_token(me, "export"), make_token(me, "verify", days=1)
    c1, c2 = bearer(b, first["secret"]), bearer(b, second["secret"])
    assert c1.get("/api/admin/audit/verify").json()["intact"] is True
    [listed_then] = [t for t in me.client.get("/api/tokens").json()["tokens"]
                     if t["name"] == "export"]
    assert listed_then["last_used_at"] is not None and listed_then["state"] == "live"
    assert "secret" not in listed_then and first["secret"] not in str(
        me.client.get("/api/tokens").json())

    gone = me.client.delete(f"/api/tokens/{first['token']['id']}",
                            headers={"X-CSRF-Token": me.csrf})
    assert gone.status_code == 200
    r = c1.get("/api/admin/audit/verify")
    assert r.status_code == 401 and r.json()["error"] == "token_revoked", r.text

    with b.runtime.db.begin() as s:  # a day later: the clock of the database moved on
        s.execute(update(ApiTokenRow).where(ApiTokenRow.id == second["token"]["id"])
                  .values(expires_at=utc_now() - timedelta(seconds=1)))
    r = c2.get("/api/admin/audit.csv")
    assert r.status_code == 401 and r.json()["error"] == "token_expired", r.text
    assert "控制台" in r.json()["message"]  # Chinese unless the client asks otherwise

    actions = [(a.action, a.outcome) for a in b.audit() if a.action.startswith("api-token")]
    assert actions == [("api-token-create", "ok"), ("api-token-create", "ok"),
                       ("api-token-revoke", "ok"), ("api-token-use", "refused"),
                       ("api-token-use", "refused")]
    fingerprints = {first["token"]["fingerprint"], second["token"]["fingerprint"]}
    for a in b.audit():
        assert first["secret"] not in a.detail + a.target
        assert second["secret"] not in a.detail + a.target
        if a.action.startswith("api-token"):
            assert a.target.removeprefix("token ") in fingerprints
    # the database keeps the hash only
    with b.runtime.db() as s:
        hashes = set(s.scalars(ApiTokenRow.__table__.select().with_only_columns(
            ApiTokenRow.token_hash)))
    assert hashes == {hash_secret(first["secret"]), hash_secret(second["secret"])}


def test_a_token_opens_no_console_and_makes_no_token_and_never_falls_back_to_the_cookie(
        fake: FakeHostBroker) -> None:
    b = fake.broker
    me = b.login("wangwu")
    secret = make_token(me)["secret"]
    # a clerk's console grant, with the clerk's cookie: a bearer header beside them is
    # refused before the grant is looked at (the grant stays good for the browser)
    clerk = b.login("zhangsan")
    ws_url = b.ws_url + clerk.connect_when_ready("window")["console"]
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url, origin=Origin(b.url), open_timeout=10, additional_headers={
            "Cookie": clerk.cookie_header, "Authorization": f"Bearer {secret}"})
    assert refused.value.response.status_code == 403
    connect(ws_url, origin=Origin(b.url), open_timeout=10,
            additional_headers={"Cookie": clerk.cookie_header}).close()
    r = bearer(b, secret).post("/api/tokens", json={"name": "another", "days": 5})
    assert r.status_code == 403 and r.json()["error"] == "bearer_not_here"
    page = bearer(b, secret).get("/helpdesk", follow_redirects=False)
    assert page.status_code == 403 and page.json()["error"] == "bearer_not_here"
    # a signed-in browser's cookie beside a bad token, without the CSRF token: the token
    # alone decides, and it is refused (the cookie does not let the change through)
    for bad in ("Bearer", "Bearer vdi_" + "A" * 43, f"bearer {secret[:-1]}"):
        r = me.client.post("/api/helpdesk/desktops/window-0/messages", json={"text": "hi"},
                           headers={"Authorization": bad})
        assert r.status_code == 401 and r.json()["error"] == "token_invalid", r.text
    # another scheme is not a token: the cookie is asked for its CSRF token as ever
    r = me.client.post("/api/helpdesk/desktops/window-0/messages", json={"text": "hi"},
                       headers={"Authorization": "Basic d2FuZ3d1OmRlbW8="})
    assert r.status_code == 403 and r.json()["error"] == "csrf"


def test_unknown_tokens_are_throttled_per_address(fake: FakeHostBroker) -> None:
    b = fake.broker
    c = bearer(b, "vdi_" + "Z" * 43)
    answers = [c.get("/api/session") for _ in range(6)]
    assert [r.status_code for r in answers] == [401] * 5 + [429]
    assert int(answers[-1].headers["retry-after"]) > 0
    assert [a.outcome for a in b.audit(action="api-token-use")] == ["refused"] * 5 + [
        "throttled"]
    ok = bearer(b, make_token(b.login("zhaoliu"))["secret"]).get("/api/admin/dashboard")
    assert ok.status_code == 200  # a real token from the same address still works


def test_the_security_administrator_revokes_anyones_token(fake: FakeHostBroker) -> None:
    b = fake.broker
    made = make_token(b.login("zhaoliu"), "nightly")
    sec = b.login("wujiu")
    [listed] = sec.client.get("/api/security/tokens").json()["tokens"]
    assert (listed["username"], listed["name"]) == ("zhaoliu", "nightly")
    r = sec.client.post(f"/api/security/tokens/{listed['id']}/revoke",
                        json={"reason": "left the IT department"},
                        headers={"X-CSRF-Token": sec.csrf})
    assert r.status_code == 200, r.text
    r = bearer(b, made["secret"]).get("/api/admin/dashboard")
    assert r.status_code == 401 and r.json()["error"] == "token_revoked"
    [revoked] = b.audit(action="api-token-revoke")
    assert revoked.actor == "wujiu" and "left the IT department" in revoked.detail


# -- the directory decides (a slapd of this test's own, changed with ldapmodify) ---------

RECHECK_S = 1


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[RunningBroker, SlapdServer]]:
    with SlapdServer() as slapd:
        host = FakeHypervisor("fake:///token-tests")
        b = start_broker(tmp_path / "broker", slapd, hosts={host.uri: host},
                         libvirt_uri=host.uri, session_recheck_s=RECHECK_S)
        try:
            b.publish_image(host, "guest", write_fake_image(tmp_path / "image"))
            yield b, slapd
        finally:
            b.stop()


def test_a_token_stops_when_its_owner_leaves_the_group_that_gave_the_role(
        own_broker: tuple[RunningBroker, SlapdServer]) -> None:
    b, slapd = own_broker
    c = bearer(b, make_token(b.login("wangwu"))["secret"])
    assert c.get("/api/helpdesk/clerks?q=zhang").status_code == 200
    # the group keeps a member (groupOfNames needs one): another person takes over
    slapd.modify(f"dn: cn=helpdesk,{GROUP_BASE}\nchangetype: modify\nadd: member\n"
                 f"member: uid=lisi,{USER_BASE}\n-\ndelete: member\n"
                 f"member: uid=wangwu,{USER_BASE}\n")

    def refused() -> bool:
        r = c.get("/api/helpdesk/clerks?q=zhang")
        return r.status_code == 401 and r.json()["error"] == "token_not_allowed"

    wait_for(refused, RECHECK_S * 5 + 5, "the token to stop after the group change")
    [roles] = b.audit(action="api-token-roles")
    assert roles.actor == "wangwu" and "helpdesk" in roles.detail
    slapd.modify(f"dn: cn=helpdesk,{GROUP_BASE}\nchangetype: modify\nadd: member\n"
                 f"member: uid=wangwu,{USER_BASE}\n")
    wait_for(lambda: c.get("/api/helpdesk/clerks?q=zhang").status_code == 200,
             RECHECK_S * 5 + 5, "the token to work again once back in the group")
