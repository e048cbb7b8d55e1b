"""Directory adapter: one contract, run against FakeDirectory and against a real slapd.

Failure modes that only a network can show (refusing, hanging, TLS, configuration)
are tested against the real adapter only.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from broker.auth.directory import (
    MAX_GROUP_NESTING,
    Directory,
    DirectoryUnavailable,
    DirectoryUser,
    InvalidCredentials,
    normalize_dn,
)
from broker.auth.fake_directory import FakeDirectory
from broker.auth.ldap import LdapDirectory
from harness.ldap_server import (
    DEMO_PASSWORD,
    GROUP_BASE,
    USER_BASE,
    SilentServer,
    SlapdServer,
    TlsProxy,
    free_loopback_port,
    make_tls_files,
)
from vdi.settings import Settings


def group(cn: str) -> str:
    return f"cn={cn},{GROUP_BASE}"


# The demo directory (deploy/ldap/demo.ldif) as FakeDirectory data.
FAKE_USERS = {
    "zhangsan": (DEMO_PASSWORD, "张三", [group("dongjie-window")]),
    "sunqi": (DEMO_PASSWORD, "孙七", [group("dongjie-window")]),
    "lisi": (DEMO_PASSWORD, "李四", [group("xijie-window")]),
    "wangwu": (DEMO_PASSWORD, "王五", [group("helpdesk")]),
    "zhaoliu": (DEMO_PASSWORD, "赵六", [group("it-ops")]),
    "zhouba": (DEMO_PASSWORD, "周八", []),
    "wujiu": (DEMO_PASSWORD, "吴九", [group("vdi-security")]),
    "zhengshi": (DEMO_PASSWORD, "郑十", [group("vdi-auditors")]),
    "fengyi": (DEMO_PASSWORD, "冯一", [group("it-ops"), group("vdi-auditors")]),
}
FAKE_GROUPS = {
    group("dongjie-window"): [group("window-staff")],
    group("xijie-window"): [group("window-staff")],
    group("it-ops"): [group("vdi-admins")],
}

EXPECTED = {
    "zhangsan": ("张三", {"dongjie-window", "window-staff"}),
    "sunqi": ("孙七", {"dongjie-window", "window-staff"}),
    "lisi": ("李四", {"xijie-window", "window-staff"}),
    "wangwu": ("王五", {"helpdesk"}),
    "zhaoliu": ("赵六", {"it-ops", "vdi-admins"}),
    "zhouba": ("周八", set()),
    "wujiu": ("吴九", {"vdi-security"}),
    "zhengshi": ("郑十", {"vdi-auditors"}),
    "fengyi": ("冯一", {"it-ops", "vdi-admins", "vdi-auditors"}),
}

INJECTION_USERNAMES = ["*", "zhang*", "*)(uid=*", "zhangsan)(|(uid=*", "\\", "zhangsan\\",
                       "(uid=zhangsan)", "zhangsan\x00", "\x00", "*)(objectClass=*"]
MALFORMED_USERNAMES = ["zhang\nsan", "zhangsan\r", "zhang\tsan", "zhang\u200bsan",
                       "zhangsan\u202e", "z" * 65]
BLANK_INPUT = [("", DEMO_PASSWORD), ("   ", DEMO_PASSWORD), ("\t\n", DEMO_PASSWORD),
               ("zhangsan", ""), ("zhangsan", " "), ("zhangsan", "\t \n"), ("", "")]


def ldap_settings(slapd: SlapdServer, **changes: Any) -> Settings:
    return Settings(**slapd.settings_overrides(**changes))


def unreachable_settings(url: str, timeout_s: float = 1.0) -> Settings:
    return Settings(ldap_url=url, ldap_base_dn="dc=district,dc=example",
                    ldap_bind_dn="cn=broker,ou=services,dc=district,dc=example",
                    ldap_bind_password="broker-secret", ldap_timeout_s=timeout_s)


@pytest.fixture(params=["fake", pytest.param("ldap", marks=pytest.mark.real)])
def directory(request: pytest.FixtureRequest) -> Directory:
    if request.param == "fake":
        return FakeDirectory(FAKE_USERS, FAKE_GROUPS, user_base=USER_BASE)
    slapd: SlapdServer = request.getfixturevalue("slapd")
    return LdapDirectory(ldap_settings(slapd))


# ---- contract: FakeDirectory and LdapDirectory alike ---------------------------------

def test_good_login_returns_display_name_and_nested_groups(directory: Directory) -> None:
    user = directory.authenticate("zhangsan", DEMO_PASSWORD)
    assert user == DirectoryUser(
        username="zhangsan", dn=f"uid=zhangsan,{USER_BASE}", display_name="张三",
        groups=frozenset({group("dongjie-window"), group("window-staff")}))


@pytest.mark.parametrize("username", sorted(EXPECTED))
def test_every_demo_account(directory: Directory, username: str) -> None:
    display_name, groups = EXPECTED[username]
    user = directory.authenticate(username, DEMO_PASSWORD)
    assert (user.username, user.display_name) == (username, display_name)
    assert user.groups == {group(cn) for cn in groups}


def test_admin_role_only_through_nested_group(directory: Directory) -> None:
    groups = directory.authenticate("zhaoliu", DEMO_PASSWORD).groups
    assert group("vdi-admins") in groups
    assert group("it-ops") in groups


def test_user_in_no_group_gets_no_groups(directory: Directory) -> None:
    assert directory.authenticate("zhouba", DEMO_PASSWORD).groups == frozenset()


def test_group_dns_are_normalised(directory: Directory) -> None:
    for dn in directory.authenticate("lisi", DEMO_PASSWORD).groups:
        assert dn == dn.lower() == normalize_dn(dn)


@pytest.mark.parametrize("typed", ["ZhangSan", "ZHANGSAN", " zhangsan", "zhangsan  "])
def test_username_matches_like_ldap_and_comes_back_as_stored(directory: Directory,
                                                             typed: str) -> None:
    assert directory.authenticate(typed, DEMO_PASSWORD).username == "zhangsan"


@pytest.mark.parametrize(("username", "password"), [
    ("zhangsan", "wrong"),
    ("zhangsan", DEMO_PASSWORD.upper()),
    ("zhangsan", DEMO_PASSWORD + " "),
    ("nobody", DEMO_PASSWORD),
    ("zhang", DEMO_PASSWORD),
    *BLANK_INPUT,
])
def test_bad_credentials_are_refused(directory: Directory, username: str,
                                     password: str) -> None:
    with pytest.raises(InvalidCredentials) as caught:
        directory.authenticate(username, password)
    # one message for every cause, so the login form cannot tell them apart
    assert str(caught.value) == "invalid username or password"


@pytest.mark.parametrize("username", INJECTION_USERNAMES + MALFORMED_USERNAMES)
def test_filter_injection_and_malformed_usernames_are_refused(directory: Directory,
                                                              username: str) -> None:
    # with the right password: if the value reached the filter unescaped, `zhang*`
    # would match exactly zhangsan and log in
    with pytest.raises(InvalidCredentials):
        directory.authenticate(username, DEMO_PASSWORD)


# ---- fake only: the shared group-resolution code ----------------------------------

def test_group_cycles_terminate() -> None:
    a, b, c = "cn=a,dc=x", "cn=b,dc=x", "cn=c,dc=x"
    fake = FakeDirectory({"u": ("pw", "U", [a])}, {a: [b], b: [c], c: [a]})
    assert fake.authenticate("u", "pw").groups == {a, b, c}


def test_group_nesting_is_bounded() -> None:
    chain = [f"cn=g{i},dc=x" for i in range(MAX_GROUP_NESTING + 5)]
    parents = {chain[i]: [chain[i + 1]] for i in range(len(chain) - 1)}
    fake = FakeDirectory({"u": ("pw", "U", [chain[0]])}, parents)
    assert fake.authenticate("u", "pw").groups == set(chain[:MAX_GROUP_NESTING + 1])


# ---- real LDAP only --------------------------------------------------------------

@pytest.fixture
def real(slapd: SlapdServer) -> LdapDirectory:
    return LdapDirectory(ldap_settings(slapd))


@pytest.mark.real
@pytest.mark.parametrize("username", INJECTION_USERNAMES)
def test_injection_finds_nobody_so_nobody_is_bound(real: LdapDirectory,
                                                   username: str) -> None:
    with pytest.raises(InvalidCredentials) as caught:
        real.authenticate(username, DEMO_PASSWORD)
    # the search matched no entry (or the input never left the process), so no
    # user bind was attempted, as anyone
    assert caught.value.reason in ("unknown user", "control or format character in username")


@pytest.mark.real
def test_ambiguous_match_is_refused_not_first_match(slapd: SlapdServer) -> None:
    # three demo people have ou=东街街道办 and the same password: refuse, don't pick one
    by_office = LdapDirectory(ldap_settings(slapd, ldap_user_attr="ou"))
    with pytest.raises(InvalidCredentials) as caught:
        by_office.authenticate("东街街道办", DEMO_PASSWORD)
    assert caught.value.reason == "ambiguous username"
    assert by_office.authenticate("西街街道办", DEMO_PASSWORD).username == "西街街道办"


@pytest.mark.real
def test_blank_input_sends_nothing_to_the_server() -> None:
    with SilentServer(close_at_once=True) as server:
        directory = LdapDirectory(unreachable_settings(server.url))
        for username, password in [*BLANK_INPUT, ("zhang\x00san", DEMO_PASSWORD)]:
            with pytest.raises(InvalidCredentials):
                directory.authenticate(username, password)
        assert server.accepted == 0
        with pytest.raises(DirectoryUnavailable):  # the counter does count
            directory.authenticate("zhangsan", DEMO_PASSWORD)
        assert server.accepted == 1


@pytest.mark.real
def test_wrong_service_password_is_unavailable_not_a_user_error(slapd: SlapdServer) -> None:
    directory = LdapDirectory(ldap_settings(slapd, ldap_bind_password="not-it"))
    with pytest.raises(DirectoryUnavailable, match="refused the service account"):
        directory.authenticate("zhangsan", DEMO_PASSWORD)


@pytest.mark.real
def test_missing_user_base_is_unavailable(slapd: SlapdServer) -> None:
    directory = LdapDirectory(ldap_settings(slapd, ldap_user_base="ou=gone,dc=district,dc=example"))
    with pytest.raises(DirectoryUnavailable, match="user search"):
        directory.authenticate("zhangsan", DEMO_PASSWORD)


@pytest.mark.real
def test_ldap_stopped_is_unavailable_quickly() -> None:
    directory = LdapDirectory(unreachable_settings(f"ldap://127.0.0.1:{free_loopback_port()}"))
    started = time.monotonic()
    with pytest.raises(DirectoryUnavailable):
        directory.authenticate("zhangsan", DEMO_PASSWORD)
    assert time.monotonic() - started < 1.0


@pytest.mark.real
@pytest.mark.parametrize("close_at_once", [False, True], ids=["hanging", "hanging-up"])
def test_ldap_hanging_is_unavailable_within_bound(close_at_once: bool) -> None:
    timeout_s = 1.0
    with SilentServer(close_at_once=close_at_once) as server:
        directory = LdapDirectory(unreachable_settings(server.url, timeout_s))
        started = time.monotonic()
        with pytest.raises(DirectoryUnavailable):
            directory.authenticate("zhangsan", DEMO_PASSWORD)
        elapsed = time.monotonic() - started
    assert elapsed < 4 * timeout_s  # correctness bound: a hang must not hang the caller


@pytest.mark.real
def test_falls_over_to_the_next_url(slapd: SlapdServer) -> None:
    dead = f"ldap://127.0.0.1:{free_loopback_port()}"
    directory = LdapDirectory(ldap_settings(slapd, ldap_url=f"{dead} {slapd.url}"))
    assert directory.authenticate("lisi", DEMO_PASSWORD).display_name == "李四"


@pytest.mark.real
def test_parallel_logins_from_worker_threads(real: LdapDirectory) -> None:
    names = sorted(EXPECTED) * 5
    with ThreadPoolExecutor(max_workers=10) as pool:
        users = list(pool.map(lambda n: real.authenticate(n, DEMO_PASSWORD), names))
    assert [u.username for u in users] == names


@pytest.mark.real
@pytest.mark.parametrize("url", [
    "ldap://ldap.district.example", "ldap://10.0.0.5:389", "ldap://192.168.1.1",
    "ldap://[2001:db8::1]:389", "ldap://127.0.0.1 ldap://ldap.district.example",
])
def test_plaintext_to_non_loopback_is_refused(url: str) -> None:
    with pytest.raises(DirectoryUnavailable, match="plaintext"):
        LdapDirectory(unreachable_settings(url))


@pytest.mark.real
@pytest.mark.parametrize("url", [
    "ldap://127.0.0.1", "ldap://127.0.0.2:3890", "ldap://[::1]:389", "ldap://localhost",
    "ldaps://ldap.district.example", "ldaps://10.0.0.5:636",
])
def test_loopback_or_tls_urls_are_accepted(url: str) -> None:
    LdapDirectory(unreachable_settings(url))  # builds; connects only on first use


@pytest.mark.real
@pytest.mark.parametrize(("changes", "message"), [
    ({"ldap_url": "http://127.0.0.1"}, "expected ldap"),
    ({"ldap_url": "ldap://127.0.0.1/dc=x?uid"}, "only scheme, host and port"),
    ({"ldap_url": " "}, "empty"),
    ({"ldap_bind_dn": ""}, "service account"),
    ({"ldap_bind_password": ""}, "service account"),
    ({"ldap_user_attr": "uid)(x"}, "not an attribute name"),
    ({"ldap_user_base": "people"}, "user base"),
    ({"ldap_ca_file": "/nonexistent/ca.pem"}, "does not exist"),
    ({"ldap_timeout_s": 0.0}, "positive"),
])
def test_unusable_settings_are_refused_at_construction(changes: dict[str, Any],
                                                       message: str) -> None:
    settings = dataclasses.replace(unreachable_settings("ldap://127.0.0.1"), **changes)
    with pytest.raises(DirectoryUnavailable, match=message):
        LdapDirectory(settings)


# ---- real LDAP over TLS (ldaps:// through a test proxy in front of slapd) ----------

@pytest.fixture
def tls_proxy(slapd: SlapdServer, tmp_path: Path) -> Iterator[tuple[TlsProxy, Path]]:
    files = make_tls_files(tmp_path, ip="127.0.0.1")
    with TlsProxy(files, slapd.port) as proxy:
        yield proxy, files.ca_cert


@pytest.mark.real
def test_ldaps_with_the_right_ca_works(slapd: SlapdServer,
                                       tls_proxy: tuple[TlsProxy, Path]) -> None:
    proxy, ca = tls_proxy
    directory = LdapDirectory(ldap_settings(slapd, ldap_url=proxy.url, ldap_ca_file=str(ca)))
    assert directory.authenticate("zhaoliu", DEMO_PASSWORD).display_name == "赵六"


@pytest.mark.real
def test_ldaps_with_an_untrusted_certificate_is_refused(
        slapd: SlapdServer, tls_proxy: tuple[TlsProxy, Path], tmp_path: Path) -> None:
    proxy, _ = tls_proxy
    other_ca = make_tls_files(tmp_path / "other", ip="127.0.0.1").ca_cert
    for ca_file in ("", str(other_ca)):  # system trust store, then an unrelated CA
        directory = LdapDirectory(ldap_settings(slapd, ldap_url=proxy.url, ldap_ca_file=ca_file))
        with pytest.raises(DirectoryUnavailable, match=r"certificate verify failed"):
            directory.authenticate("zhangsan", DEMO_PASSWORD)
    # the client aborted both handshakes (the proxy counts them in its own thread)
    give_up = time.monotonic() + 5
    while proxy.failed_handshakes < 2 and time.monotonic() < give_up:
        time.sleep(0.01)
    assert proxy.failed_handshakes == 2


@pytest.mark.real
def test_ldaps_with_a_certificate_for_another_host_is_refused(
        slapd: SlapdServer, tmp_path: Path) -> None:
    files = make_tls_files(tmp_path, dns="ldap.elsewhere.example")
    with TlsProxy(files, slapd.port) as proxy:
        directory = LdapDirectory(ldap_settings(slapd, ldap_url=proxy.url,
                                                ldap_ca_file=str(files.ca_cert)))
        with pytest.raises(DirectoryUnavailable, match=r"doesn.t match"):
            directory.authenticate("zhangsan", DEMO_PASSWORD)


# ---- the helpdesk's people search (contract) -------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("zhang", ["zhangsan"]),
    ("ZHANG", ["zhangsan"]),
    ("张三", ["zhangsan"]),
    ("三", ["zhangsan"]),  # part of a Chinese name
    ("王", ["wangwu"]),
    ("  z  ", ["zhangsan", "zhaoliu", "zhengshi", "zhouba"]),
    ("*", []),  # a filter character is looked for as itself
    ("zhang*)(uid=*", []),
    ("", []),
    ("\t\n", []),
    ("zhang\x00", []),
    ("z" * 65, []),
])
def test_search_finds_people_by_account_or_name(directory: Directory, text: str,
                                                expected: list[str]) -> None:
    assert [u.username for u in directory.search(text)] == expected


def test_search_gives_each_person_with_their_groups_and_stops_at_the_limit(
        directory: Directory) -> None:
    [zhaoliu] = directory.search("赵六")
    assert zhaoliu == directory.lookup("zhaoliu")  # nested groups resolved as for sign-in
    assert [u.username for u in directory.search("z", limit=2)] == ["zhangsan", "zhaoliu"]
