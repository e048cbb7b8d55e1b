"""The identity is the directory's, never the typed string.

A throwaway slapd holds the demo directory plus accounts whose stored names are not
plain lower case (mixed case, fullwidth letters, an inner space, two values) and a group
whose DN holds an escaped comma. Every spelling of a name is tried against the real
directory and against FakeDirectory: each either signs in as exactly the stored name or
is refused, never as another name, and the fake answers as the real one does.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.auth.directory import (
    Directory,
    DirectoryUser,
    InvalidCredentials,
    fold_username,
    normalize_dn,
)
from broker.auth.fake_directory import FakeDirectory
from broker.auth.ldap import LdapDirectory
from broker.roles import roles_for
from harness.ldap_server import DEMO_LDIF, DEMO_PASSWORD, GROUP_BASE, USER_BASE, SlapdServer
from vdi.domain import Role
from vdi.settings import RoleMap, Settings

# deploy/ldap/demo.ldif's hash of DEMO_PASSWORD, reused for the accounts added here
DEMO_HASH = "{SSHA}3P4Hf93UlG06OSFrVTMq+v97/+ppivEz"
EAST = rf"cn=Window\, East,{GROUP_BASE}"  # one RDN, value "Window, East"
EAST_ALL = f"cn=east-all,{GROUP_BASE}"

# stored uid -> (display name, direct groups)
ACCOUNTS = {
    "Wang.XiaoMing": ("王小明", [EAST]),
    "ＬＩＵ": ("刘", []),  # stored in fullwidth letters
    "Ma Li": ("马丽", []),
}
SPELLINGS = {
    "Wang.XiaoMing": [
        "Wang.XiaoMing", "wang.xiaoming", "WANG.XIAOMING", "wAnG.xIaOmInG",
        "ｗａｎｇ．ｘｉａｏｍｉｎｇ", "ＷＡＮＧ.XiaoMing",  # fullwidth letters and full stop
        " wang.xiaoming ", "\u3000Wang.XiaoMing", "wang.xiaoming\u00a0", "Wang.XiaoMing\u2003",
        # refused: other letters, accents, look-alikes, inner spaces, zero-width
        "wang.xiaomin", "wang xiaoming", "wang.xiao ming", "wáng.xiaoming",
        "wang.xiaomіng",  # Cyrillic і
        "wang.xiao\u200bming", "wang.xiaoming*", "Wang.XiaoMing\\",
    ],
    "ＬＩＵ": ["ＬＩＵ", "liu", "LIU", "Liu", " liu", "ｌｉｕ", "lıu", "li u", "liü"],
    "Ma Li": ["Ma Li", "ma li", "MA LI", "ma  li", " Ma   Li ", "ma\u3000li", "mali", "ma_li"],
}
# spellings the real slapd was shown to accept; the rest of SPELLINGS it refuses
ACCEPTED = {
    "Wang.XiaoMing": set(SPELLINGS["Wang.XiaoMing"][:10]),
    "ＬＩＵ": set(SPELLINGS["ＬＩＵ"][:6]),
    "Ma Li": set(SPELLINGS["Ma Li"][:6]),
}
CASES = [(stored, typed) for stored, typed_list in SPELLINGS.items() for typed in typed_list]


def value_line(name: str, value: str) -> str:
    """One LDIF attribute line; non-ASCII or space-edged values in base64 (RFC 2849)."""
    if value.isascii() and value == value.strip():
        return f"{name}: {value}\n"
    return f"{name}:: {base64.b64encode(value.encode()).decode()}\n"


def person(uids: list[str], display: str) -> str:
    rdn = uids[0].replace(",", "\\,")
    return (f"\ndn: uid={rdn},{USER_BASE}\n"
            "objectClass: top\nobjectClass: person\nobjectClass: organizationalPerson\n"
            "objectClass: inetOrgPerson\n"
            + "".join(value_line("uid", u) for u in uids)
            + value_line("cn", display) + value_line("sn", display)
            + value_line("displayName", display) + f"userPassword: {DEMO_HASH}\n")


def identity_ldif() -> str:
    parts = [DEMO_LDIF.read_text(encoding="utf-8").rstrip("\n") + "\n"]
    parts += [person([uid], display) for uid, (display, _groups) in ACCOUNTS.items()]
    parts.append(person(["chen", "chen.jiu"], "陈九"))  # two values of uid
    parts.append(f"\ndn: {EAST}\nobjectClass: top\nobjectClass: groupOfNames\n"
                 f"cn: Window, East\nmember: uid=Wang.XiaoMing,{USER_BASE}\n")
    parts.append(f"\ndn: {EAST_ALL}\nobjectClass: top\nobjectClass: groupOfNames\n"
                 f"cn: east-all\nmember: {EAST}\n")
    return "".join(parts)


@pytest.fixture(scope="module")
def identity_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlapdServer]:
    ldif: Path = tmp_path_factory.mktemp("identity") / "identity.ldif"
    ldif.write_text(identity_ldif(), encoding="utf-8")
    with SlapdServer(ldif) as server:
        yield server


@pytest.fixture(scope="module")
def real(identity_slapd: SlapdServer) -> Iterator[LdapDirectory]:
    directory = LdapDirectory(Settings(**identity_slapd.settings_overrides()))
    yield directory
    directory.close()


def fake() -> FakeDirectory:
    return FakeDirectory(
        {uid: (DEMO_PASSWORD, display, groups) for uid, (display, groups) in ACCOUNTS.items()},
        {EAST: [EAST_ALL]}, user_base=USER_BASE)


def outcome(directory: Directory, typed: str) -> str | None:
    """The username signed in as, or None when refused."""
    try:
        return directory.authenticate(typed, DEMO_PASSWORD).username
    except InvalidCredentials:
        return None


@pytest.mark.parametrize(("stored", "typed"), CASES)
def test_fake_signs_in_as_the_stored_name_or_refuses(stored: str, typed: str) -> None:
    expected = stored if typed in ACCEPTED[stored] else None
    assert outcome(fake(), typed) == expected


@pytest.mark.real
@pytest.mark.parametrize(("stored", "typed"), CASES)
def test_real_directory_signs_in_as_the_stored_name_or_refuses(
        real: LdapDirectory, stored: str, typed: str) -> None:
    expected = stored if typed in ACCEPTED[stored] else None
    assert outcome(real, typed) == expected


@pytest.mark.parametrize(("stored", "typed"), CASES)
def test_every_accepted_spelling_has_the_stored_names_throttle_key(stored: str,
                                                                    typed: str) -> None:
    # the login throttle keys the typed name by fold_username before the lookup: every
    # spelling the directory accepts must land on one key, or it would get its own count
    assert (fold_username(typed) == fold_username(stored)) == (typed in ACCEPTED[stored])


@pytest.mark.real
def test_the_demo_accounts_too_come_back_as_stored(real: LdapDirectory) -> None:
    for typed in ("ＺＨＡＮＧＳＡＮ", "ｚｈａｎｇｓａｎ", "zhangſan", "\u3000ZhangSan\u00a0"):
        assert real.authenticate(typed, DEMO_PASSWORD).username == "zhangsan"


@pytest.mark.real
def test_an_entry_with_two_names_is_refused_under_either(real: LdapDirectory) -> None:
    # either value would be a different identity for one account: no guessing
    for typed in ("chen", "chen.jiu", "CHEN"):
        with pytest.raises(InvalidCredentials) as caught:
            real.authenticate(typed, DEMO_PASSWORD)
        assert caught.value.reason == "entry has 2 values of uid"


@pytest.mark.real
def test_a_group_dn_with_an_escaped_comma_grants_its_role(real: LdapDirectory) -> None:
    user = real.authenticate("wang.xiaoming", DEMO_PASSWORD)
    assert user == DirectoryUser(
        username="Wang.XiaoMing", dn=f"uid=Wang.XiaoMing,{USER_BASE}", display_name="王小明",
        groups=frozenset({normalize_dn(EAST), EAST_ALL}))
    assert user == fake().authenticate("WANG.XIAOMING", DEMO_PASSWORD)
    configured = r"CN=Window\2C East, OU=Groups, DC=District, DC=Example"
    assert roles_for(user.groups, RoleMap(staff=(configured,))) == {Role.STAFF}
    # nested through the escaped DN: east-all lists "Window, East" as a member
    assert roles_for(user.groups, RoleMap(system_admin=(EAST_ALL.upper(),))) == {Role.SYSTEM_ADMIN}


def test_the_fake_refuses_two_keys_that_are_one_name() -> None:
    with pytest.raises(ValueError, match="one name"):
        FakeDirectory({"Zhang": ("a", "Z", []), "ｚｈａｎｇ": ("b", "Z", [])})
