"""The role-by-route table: every route of the app, what it declares, and what each of
anonymous, staff, helpdesk and the three administrators (system, security, audit) gets
from it -- against the real app (real slapd, fake host). A route added without a row
here fails the first test. A person in the groups of two administrator roles holds
neither: refused at sign-in with the reason, and recorded."""

from __future__ import annotations

import httpx
import pytest
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from broker.access import allows
from tests.web.conftest import FakeHostBroker, SignedIn
from vdi.domain import Permission, Principal, Role
from web.access import Access

WHO = ("anonymous", "staff", "helpdesk", "sysadmin", "secadmin", "auditadmin")
USERS = {"staff": "zhangsan", "helpdesk": "wangwu", "sysadmin": "zhaoliu",
         "secadmin": "wujiu", "auditadmin": "zhengshi"}


def only(*who: str) -> dict[str, bool]:
    return {w: w in who for w in WHO}


ANYONE = only(*WHO)
SIGNED_IN = only(*WHO[1:])
RECLAIMS = only("helpdesk", "sysadmin", "auditadmin")
AUDIT = only("auditadmin")
HELPDESK = only("helpdesk", "sysadmin")
SECURITY = only("secadmin")
SYSTEM_ADMIN = only("sysadmin")
METERING = only("sysadmin", "auditadmin")
TOKENS = only("helpdesk", "sysadmin", "secadmin", "auditadmin")

# (method, path) -> (permission, csrf, origin, who may use it)
TABLE: dict[tuple[str, str], tuple[Permission | None, bool, bool, dict[str, bool]]] = {
    ("POST", "/api/session"): (None, False, True, ANYONE),
    ("GET", "/api/session"): (Permission.SIGNED_IN, False, False, SIGNED_IN),
    ("DELETE", "/api/session"): (Permission.SIGNED_IN, True, False, SIGNED_IN),
    ("GET", "/api/pools"): (Permission.SIGNED_IN, False, False, SIGNED_IN),
    ("POST", "/api/pools/{pool}/connect"): (Permission.SIGNED_IN, True, False, SIGNED_IN),
    ("POST", "/api/pools/{pool}/logoff"): (Permission.SIGNED_IN, True, False, SIGNED_IN),
    ("GET", "/api/pools/{pool}/status"): (Permission.SIGNED_IN, False, False, SIGNED_IN),
    ("POST", "/api/pools/{pool}/still-here"): (Permission.SIGNED_IN, True, False, SIGNED_IN),
    ("GET", "/api/admin/reclaims"): (Permission.READ_RECLAIMS, False, False, RECLAIMS),
    ("GET", "/api/admin/dashboard"): (Permission.VIEW_SERVICE, False, False, SYSTEM_ADMIN),
    ("POST", "/api/admin/images"): (Permission.MANAGE_IMAGES, True, False, SYSTEM_ADMIN),
    ("GET", "/api/admin/images/imports/{import_id}"): (Permission.MANAGE_IMAGES, False, False,
                                                       SYSTEM_ADMIN),
    ("GET", "/api/admin/images"): (Permission.VIEW_SERVICE, False, False, SYSTEM_ADMIN),
    ("GET", "/api/admin/images/files"): (Permission.MANAGE_IMAGES, False, False, SYSTEM_ADMIN),
    ("POST", "/api/admin/images/{image}/release"): (Permission.MANAGE_IMAGES, True, False,
                                                    SYSTEM_ADMIN),
    ("POST", "/api/admin/images/{image}/rollback"): (Permission.MANAGE_IMAGES, True, False,
                                                     SYSTEM_ADMIN),
    ("POST", "/api/admin/images/{image}/trial"): (Permission.MANAGE_IMAGES, True, False,
                                                  SYSTEM_ADMIN),
    ("GET", "/api/admin/pools"): (Permission.VIEW_SERVICE, False, False, SYSTEM_ADMIN),
    ("POST", "/api/admin/pools"): (Permission.MANAGE_SERVICE, True, False, SYSTEM_ADMIN),
    ("GET", "/api/admin/pools/{pool}"): (Permission.VIEW_SERVICE, False, False, SYSTEM_ADMIN),
    ("PATCH", "/api/admin/pools/{pool}"): (Permission.MANAGE_SERVICE, True, False,
                                           SYSTEM_ADMIN),
    ("GET", "/api/admin/hosts"): (Permission.VIEW_SERVICE, False, False, SYSTEM_ADMIN),
    ("POST", "/api/admin/hosts"): (Permission.MANAGE_SERVICE, True, False, SYSTEM_ADMIN),
    ("POST", "/api/admin/hosts/{host}/maintenance"): (Permission.MANAGE_SERVICE, True, False,
                                                      SYSTEM_ADMIN),
    ("GET", "/api/admin/desktops"): (Permission.VIEW_SERVICE, False, False, SYSTEM_ADMIN),
    ("POST", "/api/admin/desktops/{desktop_id}/remove"): (Permission.MANAGE_SERVICE, True,
                                                          False, SYSTEM_ADMIN),
    ("GET", "/api/admin/sessions"): (Permission.VIEW_SERVICE, False, False, SYSTEM_ADMIN),
    ("GET", "/api/admin/audit"): (Permission.READ_AUDIT, False, False, AUDIT),
    ("GET", "/api/admin/audit.csv"): (Permission.READ_AUDIT, False, False, AUDIT),
    ("GET", "/api/admin/audit/verify"): (Permission.READ_AUDIT, False, False, AUDIT),
    ("GET", "/api/admin/metering"): (Permission.READ_METERING, False, False, METERING),
    ("GET", "/api/admin/metering.csv"): (Permission.READ_METERING, False, False, METERING),
    ("GET", "/api/admin/usage"): (Permission.VIEW_SERVICE, False, False, SYSTEM_ADMIN),
    ("GET", "/api/helpdesk/clerks"): (Permission.HELPDESK, False, False, HELPDESK),
    ("GET", "/api/helpdesk/clerks/{username}"): (Permission.HELPDESK, False, False, HELPDESK),
    ("GET", "/api/helpdesk/desktops/{desktop_id}/screen"): (Permission.HELPDESK, False, False,
                                                           HELPDESK),
    ("POST", "/api/helpdesk/desktops/{desktop_id}/actions"): (Permission.HELPDESK, True, False,
                                                             HELPDESK),
    ("POST", "/api/helpdesk/desktops/{desktop_id}/messages"): (Permission.HELPDESK, True,
                                                              False, HELPDESK),
    ("POST", "/api/helpdesk/desktops/{desktop_id}/view"): (Permission.HELPDESK, True,
                                                           False, HELPDESK),
    ("POST", "/api/pools/{pool}/messages/{message_id}/seen"): (Permission.SIGNED_IN, True,
                                                              False, SIGNED_IN),
    ("GET", "/api/security/sessions"): (Permission.MANAGE_SESSIONS, False, False, SECURITY),
    ("POST", "/api/security/sessions/{handle}/end"): (Permission.MANAGE_SESSIONS, True, False,
                                                      SECURITY),
    ("GET", "/api/tokens"): (Permission.API_TOKENS, False, False, TOKENS),
    ("POST", "/api/tokens"): (Permission.API_TOKENS, True, False, TOKENS),
    ("DELETE", "/api/tokens/{token_id}"): (Permission.API_TOKENS, True, False, TOKENS),
    ("GET", "/api/security/tokens"): (Permission.MANAGE_SESSIONS, False, False, SECURITY),
    ("POST", "/api/security/tokens/{token_id}/revoke"): (Permission.MANAGE_SESSIONS, True,
                                                         False, SECURITY),
    ("GET", "/api/openapi.json"): (Permission.SIGNED_IN, False, False, SIGNED_IN),
    ("GET", "/healthz"): (None, False, False, ANYONE),
    ("GET", "/"): (None, False, False, ANYONE),
    ("GET", "/desktop/{pool}"): (Permission.SIGNED_IN, False, False, SIGNED_IN),
    ("GET", "/helpdesk"): (Permission.HELPDESK, False, False, HELPDESK),
    ("GET", "/audit"): (Permission.READ_AUDIT, False, False, AUDIT),
    ("GET", "/reports"): (Permission.READ_METERING, False, False, METERING),
    ("GET", "/security"): (Permission.MANAGE_SESSIONS, False, False, SECURITY),
    ("GET", "/api/security/policy"): (Permission.MANAGE_SESSIONS, False, False, SECURITY),
    ("PUT", "/api/security/policy"): (Permission.MANAGE_SESSIONS, True, False, SECURITY),
    ("GET", "/tokens"): (Permission.API_TOKENS, False, False, TOKENS),
    ("GET", "/admin"): (Permission.VIEW_SERVICE, False, False, SYSTEM_ADMIN),
    ("GET", "/static/dist/{name}"): (None, False, False, ANYONE),
    # the one-time token is the websocket's credential (tests/web/test_console.py)
    ("WS", "/console/{token}"): (None, False, True, ANYONE),
    ("WS", "/helpdesk/view/{token}"): (None, False, True, ANYONE),
    ("MOUNT", "/static"): (None, False, False, ANYONE),
}


def declared(routes: list[BaseRoute]) -> dict[tuple[str, str], Access | None]:
    found: dict[tuple[str, str], Access | None] = {}
    for r in routes:
        if isinstance(r, Route):
            methods = sorted((r.methods or set()) - {"HEAD"})
            for m in methods:
                found[(m, r.path)] = getattr(r.endpoint, "access", None)
        elif isinstance(r, WebSocketRoute):
            found[("WS", r.path)] = getattr(r.endpoint, "access", None)
        elif isinstance(r, Mount):
            found[("MOUNT", r.path)] = Access(None)  # static files: public by nature
        else:
            pytest.fail(f"a route of an unknown type: {r!r}")
    return found


def test_every_route_has_a_row_and_declares_what_the_row_says(fake: FakeHostBroker) -> None:
    found = declared(fake.broker.app.routes)
    assert set(found) == set(TABLE), (
        f"routes without a row: {sorted(set(found) - set(TABLE))}; "
        f"rows without a route: {sorted(set(TABLE) - set(found))}")
    for key, access in found.items():
        assert access is not None, f"{key} declares no access (web.access.route)"
        permission, csrf, origin, _ = TABLE[key]
        assert (access.permission, access.csrf, access.origin) == (permission, csrf, origin), key


def test_the_permission_table_matches_the_route_table() -> None:
    for key, (permission, _, _, may) in TABLE.items():
        for who in WHO[1:]:
            roles = frozenset({Role(who)})
            p = Principal(username="x", display_name="x", roles=roles, groups=frozenset())
            want = may[who]
            got = permission is None or allows(p, permission)
            assert got == want, f"{who} on {key}: table says {want}"


def _path(path: str) -> str:
    return (path.replace("{pool}", "window").replace("{name}", "desktop.js")
            .replace("{import_id}", "1").replace("{username}", "zhangsan")
            .replace("{desktop_id}", "window-0").replace("{message_id}", "1")
            .replace("{handle}", "0" * 16).replace("{token_id}", "999999")
            .replace("{image}", "guest").replace("{host}", "local")
            + ("?q=zhang" if path == "/api/helpdesk/clerks" else ""))


def _call(client: httpx.Client, method: str, path: str, csrf: str | None) -> httpx.Response:
    headers = {"X-CSRF-Token": csrf} if csrf else {}
    if (method, path) == ("POST", "/api/session"):  # wrong password: refused, not forbidden
        return client.post(path, json={"username": "zhangsan", "password": "nope"})
    return client.request(method, _path(path), headers=headers, follow_redirects=False)


@pytest.mark.parametrize("who", WHO)
def test_each_role_gets_what_the_table_grants(fake: FakeHostBroker, who: str) -> None:
    signed: SignedIn | None = fake.broker.login(USERS[who]) if who != "anonymous" else None
    client = signed.client if signed else fake.broker.client()
    for (method, path), (_, csrf, _, may) in TABLE.items():
        if method in ("WS", "MOUNT") or (method, path) == ("DELETE", "/api/session"):
            continue  # the websocket is tested with its tokens; logout last, below
        r = _call(client, method, path, signed.csrf if signed and csrf else None)
        refused = r.status_code in (401, 403) and r.json().get("error") in (
            "not_signed_in", "forbidden")
        redirected = r.status_code == 303 and r.headers["location"] == "/"
        if may[who]:
            assert not refused and not redirected, f"{who} {method} {path}: {r.status_code}"
        elif path.startswith(("/desktop/", "/helpdesk", "/audit", "/reports",
                              "/security", "/tokens")) or path == "/admin":
            assert redirected, f"{who} {method} {path}: {r.status_code}"
        else:
            assert refused, f"{who} {method} {path}: {r.status_code} {r.text[:200]}"
            want = "not_signed_in" if who == "anonymous" else "forbidden"
            assert r.json()["error"] == want
        if signed and csrf and may[who]:  # without the session's CSRF token: refused
            bare = client.request(method, _path(path))
            assert bare.status_code == 403 and bare.json()["error"] == "csrf", (method, path)
    out = client.request("DELETE", "/api/session",
                         headers={"X-CSRF-Token": signed.csrf} if signed else {})
    assert out.status_code == (200 if signed else 401)


def test_a_person_in_two_administrator_groups_holds_neither(fake: FakeHostBroker) -> None:
    # fengyi: it-ops (-> vdi-admins: system) and vdi-auditors (audit), no pool
    r = fake.broker.client().post("/api/session",
                                  json={"username": "fengyi", "password": "demo2026"})
    assert r.status_code == 403 and r.json()["error"] == "role_conflict", r.text
    assert "三员分立" in r.json()["message"]  # Chinese first
    [conflict] = fake.broker.audit(action="role-conflict")
    assert conflict.actor == "fengyi" and conflict.outcome == "refused"
    assert "auditadmin, sysadmin" in conflict.detail
    assert [a.actor for a in fake.broker.audit(outcome="no_access")] == ["fengyi"]
