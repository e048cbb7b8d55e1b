"""The JSON API over real HTTP: a real uvicorn server, the real slapd, fake or real hosts."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from starlette.routing import Route

from harness.ldap_server import DEMO_PASSWORD, SlapdServer, free_loopback_port
from pools.hypervisor import ImageDisk
from tests.web.conftest import (
    DOMAIN_PREFIX,
    BrokerFactory,
    FakeHostBroker,
    HangingProxy,
    RunningBroker,
    start_with_fake_host,
    wait_for,
    window_pool,
)
from vdi.domain import DesktopState, utc_now
from vdi.models import (
    AuditRow,
    ConsoleTokenRow,
    DesktopRow,
    HostRow,
    ImageRow,
    ImageVersionRow,
    SessionRow,
)
from web.access import cookie_name

pytestmark = pytest.mark.real

EN = {"Accept-Language": "en"}
GENERIC_401 = {"error": "invalid_credentials", "message": "Wrong username or password."}
TOKEN_PATH = re.compile(r"^/console/[A-Za-z0-9_-]{43}$")


def post_login(client: httpx.Client, username: str, password: str = DEMO_PASSWORD,
               **headers: str) -> httpx.Response:
    return client.post("/api/session", json={"username": username, "password": password},
                       headers=headers)


def seed_assigned_desktop(broker: RunningBroker, pool_id: str, username: str) -> str:
    """A desktop row assigned before the host went away (as the broker would have left it)."""
    now = utc_now()
    desktop_id = f"{pool_id}-seeded"
    with broker.runtime.db.begin() as s:
        s.add(DesktopRow(id=desktop_id, pool_id=pool_id, state=DesktopState.ASSIGNED.value,
                         host_uri=broker.settings.libvirt_uri,
                         domain_name=f"{DOMAIN_PREFIX}{desktop_id}", image_version=1,
                         assigned_user=username, console_host="127.0.0.1", console_port=5999,
                         created_at=now, updated_at=now, assigned_at=now))
    return desktop_id


def desktop_rows(broker: RunningBroker) -> dict[str, tuple[str, str | None]]:
    with broker.runtime.db() as s:
        return {r.id: (r.state, r.assigned_user) for r in s.scalars(select(DesktopRow))}


# -- sessions ------------------------------------------------------------------------------


def test_login_sets_a_strict_cookie_and_names_the_user(fake: FakeHostBroker) -> None:
    broker = fake.broker
    client = broker.client()
    r = post_login(client, "zhangsan")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"user", "roles", "csrf"}
    assert body["user"] == {"username": "zhangsan", "display_name": "张三"}
    assert body["roles"] == ["staff"]
    assert isinstance(body["csrf"], str) and len(body["csrf"]) >= 32

    set_cookies = r.headers.get_list("set-cookie")
    assert len(set_cookies) == 1, set_cookies
    jar: SimpleCookie = SimpleCookie()
    jar.load(set_cookies[0])
    morsel = jar[cookie_name(broker.settings)]
    assert len(morsel.value) >= 40
    assert morsel["httponly"] is True
    assert morsel["samesite"].lower() == "strict"
    assert morsel["path"] == "/"
    assert not morsel["domain"]  # host-only
    assert morsel.value not in r.text  # the session id is not in the body

    me = client.get("/api/session")
    assert me.status_code == 200
    assert me.json() == body


def test_each_login_gets_a_new_session_id(fake: FakeHostBroker) -> None:
    first = fake.broker.login("zhangsan")
    second = fake.broker.login("zhangsan")
    assert first.cookie != second.cookie
    assert first.csrf != second.csrf


def test_logout_needs_the_csrf_token_and_kills_the_cookie(fake: FakeHostBroker) -> None:
    broker = fake.broker
    me = broker.login("zhangsan")

    no_token = me.client.delete("/api/session")
    assert no_token.status_code == 403
    assert no_token.json()["error"] == "csrf"
    wrong_token = me.client.delete("/api/session", headers={"X-CSRF-Token": "x" * 32})
    assert wrong_token.status_code == 403
    assert me.client.get("/api/session").status_code == 200  # still signed in

    out = me.logout()
    assert out.status_code == 200, out.text
    assert out.json() == {"ok": True}

    replay = broker.client(Cookie=me.cookie_header)
    for method, path in (("GET", "/api/session"), ("GET", "/api/pools"),
                         ("DELETE", "/api/session"), ("POST", "/api/pools/window/connect")):
        r = replay.request(method, path, headers={"X-CSRF-Token": me.csrf})
        assert r.status_code == 401, (method, path, r.text)
        assert r.json()["error"] == "not_signed_in"
    with broker.runtime.db() as s:
        row = s.scalars(select(SessionRow).where(SessionRow.username == "zhangsan")).one()
        assert row.ended_at is not None
    assert [a.outcome for a in broker.audit(action="logout")] == ["ok"]


BAD_CREDENTIALS = [
    ("zhangsan", "wrong-password"),
    ("zhangsan", ""),
    ("", DEMO_PASSWORD),
    ("   ", DEMO_PASSWORD),
    ("zhangsan", "   "),
    ("zhangsan", "\t\n"),
    ("nobody", DEMO_PASSWORD),
    ("*", DEMO_PASSWORD),
    ("zhang*", DEMO_PASSWORD),
    ("*)(uid=*", DEMO_PASSWORD),
    ("*)(uid=*))(|(uid=*", DEMO_PASSWORD),
]


def test_bad_credentials_all_get_one_generic_answer(fake: FakeHostBroker) -> None:
    broker = fake.broker
    client = broker.client()
    for username, password in BAD_CREDENTIALS:
        r = post_login(client, username, password, **EN)
        assert r.status_code == 401, (username, password, r.text)
        assert r.json() == GENERIC_401, (username, password)
        assert "set-cookie" not in r.headers
    assert not client.cookies
    assert client.get("/api/session").status_code == 401
    denied = broker.audit(action="login", outcome="denied")
    assert len(denied) == len(BAD_CREDENTIALS)
    assert all(DEMO_PASSWORD not in (a.detail + a.actor) for a in denied)


def test_login_from_a_foreign_or_missing_origin_is_refused(fake: FakeHostBroker) -> None:
    broker = fake.broker
    for origin in (None, "http://evil.example", "null", broker.url + ".evil.example",
                   broker.url.replace("127.0.0.1", "localhost")):
        client = broker.client(origin=origin)
        r = post_login(client, "zhangsan")
        assert r.status_code == 403, (origin, r.text)
        assert r.json()["error"] == "bad_origin"
        assert "set-cookie" not in r.headers
    assert broker.audit(action="login", outcome="ok") == []


def test_login_body_must_be_a_small_json_object(fake: FakeHostBroker) -> None:
    client = fake.broker.client()
    bodies: list[tuple[bytes, str]] = [
        (b"username=zhangsan&password=demo2026", "application/x-www-form-urlencoded"),
        (b"{not json", "application/json"),
        (b'["zhangsan", "demo2026"]', "application/json"),
        (b'{"username": "zhangsan"}', "application/json"),
        (b'{"username": "zhangsan", "password": 2026}', "application/json"),
        (b'{"username": ["zhangsan"], "password": "demo2026"}', "application/json"),
        (json.dumps({"username": "zhangsan", "password": DEMO_PASSWORD,
                     "padding": "x" * 65536}).encode(), "application/json"),
    ]
    for body, content_type in bodies:
        r = client.post("/api/session", content=body, headers={"Content-Type": content_type})
        assert r.status_code == 400, (body[:60], r.text)
        assert r.json()["error"] == "bad_request"
        assert "set-cookie" not in r.headers


def test_five_failures_throttle_the_account_even_with_the_right_password(
        fake: FakeHostBroker) -> None:
    broker = fake.broker
    client = broker.client()
    for _ in range(5):
        assert post_login(client, "zhangsan", "wrong").status_code == 401
    r = post_login(client, "zhangsan", **EN)
    assert r.status_code == 429, r.text
    assert r.json()["error"] == "too_many_attempts"
    assert int(r.headers["retry-after"]) > 0
    assert "set-cookie" not in r.headers
    # the account's spelling does not get around it
    assert post_login(client, "ZhangSan").status_code == 429
    # another account from the same address is not locked out
    assert post_login(broker.client(), "sunqi").status_code == 200
    assert len(broker.audit(action="login", outcome="throttled")) == 2


def test_spellings_of_one_account_sign_in_as_the_stored_name(fake: FakeHostBroker) -> None:
    # the directory matches names loosely; the identity is its stored value, never the
    # typed one: same user in the session, the audit and (so) for desktops
    broker = fake.broker
    for typed in ("ZhangSan", "ＺＨＡＮＧＳＡＮ", "\u3000zhangsan"):
        r = post_login(broker.client(), typed)
        assert r.status_code == 200, (typed, r.text)
        assert r.json()["user"]["username"] == "zhangsan"
    assert [a.actor for a in broker.audit(action="login", outcome="ok")] == ["zhangsan"] * 3


def test_a_user_in_no_group_has_no_access(fake: FakeHostBroker) -> None:
    client = fake.broker.client()
    r = post_login(client, "zhouba")
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "no_access"
    assert "set-cookie" not in r.headers
    assert [a.actor for a in fake.broker.audit(outcome="no_access")] == ["zhouba"]


def test_ldap_stopped_answers_503_at_once(broker_factory: BrokerFactory,
                                         fake_image: ImageDisk) -> None:
    dead = f"ldap://127.0.0.1:{free_loopback_port()}"
    broker = start_with_fake_host(broker_factory, fake_image, ldap_url=dead).broker
    client = broker.client()
    started = time.monotonic()
    r = post_login(client, "zhangsan", **EN)
    elapsed = time.monotonic() - started
    assert r.status_code == 503, r.text
    assert r.json() == {"error": "directory_unavailable", "message":
                        "The directory is unavailable. Try again shortly or call the helpdesk."}
    assert "set-cookie" not in r.headers
    # a refused connection must not wait out the timeout meant for a hanging server
    assert elapsed < 2 * broker.settings.ldap_timeout_s
    assert client.get("/healthz").json() == {"status": "ok"}


def test_ldap_hanging_is_bounded_and_the_server_stays_responsive(
        broker_factory: BrokerFactory, fake_image: ImageDisk, slapd: SlapdServer) -> None:
    with HangingProxy(slapd.port) as proxy:
        broker = start_with_fake_host(broker_factory, fake_image, ldap_url=proxy.url).broker
        timeout_s = broker.settings.ldap_timeout_s
        lisi = broker.login("lisi")  # signed in while the directory still answered
        proxy.hanging = True

        result: dict[str, Any] = {}

        def hanging_login() -> None:
            started = time.monotonic()
            r = post_login(broker.client(), "zhangsan", **EN)
            result["elapsed"] = time.monotonic() - started
            result["status"] = r.status_code
            result["body"] = r.json()

        login = threading.Thread(target=hanging_login)
        login.start()
        wait_for(lambda: proxy.held >= 1, 5 * timeout_s, "the login to reach the hung LDAP")

        health = broker.client().get("/healthz")
        pools = lisi.client.get("/api/pools")
        me = lisi.client.get("/api/session")
        still_hanging = login.is_alive()
        login.join(10 * timeout_s)

        assert health.status_code == 200
        assert pools.status_code == 200 and [p["id"] for p in pools.json()["pools"]] == ["window"]
        assert me.status_code == 200
        assert still_hanging, "the hanging login ended before the other requests were served"
        assert not login.is_alive(), "the login never answered"
        assert result["status"] == 503
        assert result["body"]["error"] == "directory_unavailable"
        assert result["elapsed"] <= 4 * timeout_s + 1.0, result


# -- pools and connect -------------------------------------------------------------------------


def test_pool_list_shows_only_entitled_pools(fake: FakeHostBroker) -> None:
    staff = fake.broker.login("zhangsan").client.get("/api/pools")
    assert staff.status_code == 200
    assert staff.json() == {"pools": [{"id": "window", "name": "窗口桌面", "kind": "floating",
                                       "protocol": "vnc", "desktop": None, "notice": None}]}
    helpdesk = fake.broker.login("wangwu").client.get("/api/pools")
    assert [p["id"] for p in helpdesk.json()["pools"]] == ["tools"]
    admin = fake.broker.login("zhaoliu")
    assert admin.body["roles"] == ["sysadmin"]
    assert admin.client.get("/api/pools").json() == {"pools": []}


def test_connect_without_csrf_is_refused_and_assigns_nothing(fake: FakeHostBroker) -> None:
    broker = fake.broker
    me = broker.login("zhangsan")
    broker.wait_ready("window")
    # a token one character off (never the token itself: it may end in "x" already)
    off_by_one = me.csrf[:-1] + ("y" if me.csrf.endswith("x") else "x")
    for headers in ({}, {"X-CSRF-Token": ""}, {"X-CSRF-Token": off_by_one}):
        r = me.client.post("/api/pools/window/connect", headers=headers)
        assert r.status_code == 403, r.text
        assert r.json()["error"] == "csrf"
    # another user's CSRF token is no good either
    other = broker.login("sunqi")
    r = me.client.post("/api/pools/window/connect", headers={"X-CSRF-Token": other.csrf})
    assert r.status_code == 403
    assert broker.desktops("window", (DesktopState.ASSIGNED,)) == []


def test_connect_to_a_foreign_or_unknown_pool_gets_the_same_404(fake: FakeHostBroker) -> None:
    me = fake.broker.login("zhangsan")
    foreign = me.connect("tools")
    unknown = me.connect("no-such-pool")
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json() == unknown.json()
    assert foreign.json()["error"] == "pool_not_found"
    assert foreign.json()["message"]
    denied = fake.broker.audit(action="connect", outcome="denied")
    assert [(a.target, a.detail) for a in denied] == [("tools", "not_entitled"),
                                                      ("no-such-pool", "pool_not_found")]


def test_connect_assigns_a_desktop_and_gives_a_console_token(fake: FakeHostBroker) -> None:
    broker = fake.broker
    me = broker.login("zhangsan")
    broker.wait_ready("window")
    body = me.connect_when_ready("window")
    assert set(body) == {"desktop", "protocol", "console", "expires_in"}
    assert body["protocol"] == "vnc"
    assert TOKEN_PATH.match(body["console"]), body["console"]
    assert body["expires_in"] == broker.settings.console_token_ttl_s
    assigned = broker.desktops("window", (DesktopState.ASSIGNED,))
    assert [(d.id, d.assigned_user) for d in assigned] == [(body["desktop"], "zhangsan")]
    # only the token's hash is stored
    raw = body["console"].removeprefix("/console/")
    with broker.runtime.db() as s:
        stored = list(s.scalars(select(ConsoleTokenRow.token_hash)))
    assert len(stored) == 1 and raw not in stored[0]

    again = me.connect_when_ready("window")
    assert again["desktop"] == body["desktop"]
    assert again["console"] != body["console"]
    assert len(broker.desktops("window", (DesktopState.ASSIGNED,))) == 1
    listed = me.client.get("/api/pools").json()["pools"]
    assert listed[0]["desktop"] == body["desktop"]


def test_full_pool_answers_409(broker_factory: BrokerFactory, fake_image: ImageDisk) -> None:
    broker = start_with_fake_host(broker_factory, fake_image,
                                  pools=(window_pool(min_ready=1, max_size=1),)).broker
    broker.wait_ready("window")
    first = broker.login("zhangsan").connect_when_ready("window")
    r = broker.login("lisi").connect("window")
    assert r.status_code == 409, r.text
    assert r.json()["error"] == "pool_full"
    # lisi waits in line: first for the desktop that comes free, and told so
    assert r.json()["place"] == 1 and "第 1 位" in r.json()["message"], r.text
    again = broker.login("sunqi").connect("window")
    assert again.json()["place"] == 2, again.text
    assert [d.assigned_user for d in broker.desktops("window")] == ["zhangsan"]
    assert broker.desktops("window")[0].id == first["desktop"]


def test_host_down_answers_503_and_deletes_nothing(broker_factory: BrokerFactory,
                                                   fake_image: ImageDisk) -> None:
    fake = start_with_fake_host(broker_factory, fake_image, down=True)
    broker = fake.broker
    seeded = seed_assigned_desktop(broker, "window", "lisi")
    me = broker.login("zhangsan")
    assert_host_unavailable_and_nothing_deleted(broker, me.connect, seeded)


def test_libvirtd_not_running_answers_503_and_deletes_nothing(
        broker_factory: BrokerFactory) -> None:
    """The real LibvirtHost, pointed at a libvirtd socket that does not exist."""
    uri = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"
    broker = broker_factory(hosts=None, libvirt_uri=uri, storage_pool="vdi-test",
                            storage_dir=Path("/var/lib/libvirt/images/vdi-test"),
                            domain_type="qemu", libvirt_timeout_s=5.0)
    with broker.runtime.db.begin() as s:  # published while libvirtd still ran
        s.add(ImageRow(id="guest", host_uri=uri, version=1,
                       disk_path="/var/lib/libvirt/images/vdi-test/guest-v1-disk.qcow2",
                       disk_bytes=1 << 30, digest="0" * 64, published_at=utc_now()))
        s.add(ImageVersionRow(image_id="guest", version=1, digest="0" * 64, firmware="bios",
                              os_family="linux", arch="x86_64", virtio=True, agent=True,
                              boot_delay_s=0, secure_boot=False, disk_bytes=1 << 30,
                              file_bytes=1 << 20, source="guest.qcow2", source_format="qcow2",
                              imported_by="test", imported_at=utc_now()))
    broker.save_pool(window_pool())
    seeded = seed_assigned_desktop(broker, "window", "lisi")
    me = broker.login("zhangsan")
    assert_host_unavailable_and_nothing_deleted(broker, me.connect, seeded)
    with broker.runtime.db() as s:
        notes = list(s.scalars(select(HostRow.error).where(HostRow.uri == uri)))
    # the host monitor noted why, and the note names the socket that is not there
    assert notes and all(n and "/nonexistent/libvirt-sock" in n for n in notes), notes


def assert_host_unavailable_and_nothing_deleted(
        broker: RunningBroker, connect: Callable[[str], httpx.Response], seeded: str) -> None:
    answers: list[httpx.Response] = []

    def host_unavailable() -> bool:
        r = connect("window")
        answers.append(r)
        assert r.status_code == 503, r.text  # desktop_starting until the worker saw the failure
        return bool(r.json()["error"] == "host_unavailable")

    wait_for(host_unavailable, 20.0, "connect to report host_unavailable", interval_s=0.2)
    assert answers[-1].json()["message"]
    assert int(answers[-1].headers["retry-after"]) > 0
    before = desktop_rows(broker)
    time.sleep(5 * broker.settings.worker_interval_s)  # more worker ticks against the dead host
    after = desktop_rows(broker)
    assert before.keys() <= after.keys()
    assert after[seeded] == (DesktopState.ASSIGNED.value, "lisi")
    assert all(state == DesktopState.PROVISIONING.value for d, (state, _) in after.items()
               if d != seeded)
    assert broker.audit(action="connect", outcome="host_unavailable")


# -- access control ----------------------------------------------------------------------------


def api_routes(broker: RunningBroker) -> list[tuple[str, str]]:
    out = []
    for route in broker.app.routes:
        if isinstance(route, Route) and route.path.startswith("/api"):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    out.append((method, route.path.replace("{pool}", "window")))
    return out


def test_anonymous_gets_401_on_every_api_route(fake: FakeHostBroker) -> None:
    broker = fake.broker
    routes = [r for r in api_routes(broker) if r != ("POST", "/api/session")]  # that is login
    assert set(routes) >= {("GET", "/api/session"), ("DELETE", "/api/session"),
                           ("GET", "/api/pools"), ("POST", "/api/pools/window/connect")}
    forged = "vdi_session=" + "A" * 43
    for headers in ({}, {"Cookie": forged}):
        client = broker.client(**headers)
        for method, path in routes:
            r = client.request(method, path, headers={"X-CSRF-Token": "x"})
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["error"] == "not_signed_in"
    assert all(user is None for _, user in desktop_rows(broker).values())


def db_state(broker: RunningBroker) -> dict[str, Any]:
    desktops = desktop_rows(broker)
    with broker.runtime.db() as s:
        return {
            "sessions": sorted((r.id_hash, r.ended_at) for r in s.scalars(select(SessionRow))),
            "desktops": desktops,
            "tokens": sorted((r.token_hash, r.used_at) for r in s.scalars(
                select(ConsoleTokenRow))),
            "audit": s.scalar(select(func.count()).select_from(AuditRow)),
        }


def test_no_route_changes_state_on_get(fake: FakeHostBroker) -> None:
    broker = fake.broker
    broker.wait_ready("window")
    me = broker.login("zhangsan")
    me.connect_when_ready("window")
    wait_for(lambda: len(broker.desktops("window", (DesktopState.READY,))) >= 1, 10.0,
             "the worker to top the pool up again")
    before = db_state(broker)
    paths = [route.path.replace("{pool}", "window") for route in broker.app.routes
             if isinstance(route, Route)]
    assert {"/api/session", "/api/pools", "/api/pools/window/connect", "/"} <= set(paths)
    for path in paths:
        for extra in ({}, {"X-CSRF-Token": me.csrf}):
            r = me.client.get(path, headers=extra)
            assert r.status_code < 500, (path, r.text)
            if path == "/api/pools/window/connect":
                assert r.status_code == 405
    assert db_state(broker) == before
    assert me.client.get("/api/session").status_code == 200
