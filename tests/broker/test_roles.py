"""Roles and pool entitlements from group DNs: compared in broker.auth.directory's one
normal form, so a DN's spelling (case, spaces, escaped commas) never decides access."""

from __future__ import annotations

import logging

import pytest

from broker.roles import entitled, mapped_roles, roles_for, withheld
from vdi.domain import Pool, PoolKind, Role
from vdi.settings import RoleMap

GROUPS = "ou=groups,dc=district,dc=example"
EAST = rf"cn=Window\, East,{GROUPS}"  # one RDN whose value holds a comma


def pool(*groups: str) -> Pool:
    return Pool(id="window", display_name="Window", kind=PoolKind.FLOATING, image="demo",
                vcpus=1, memory_mib=128, min_ready=0, max_size=1, entitled_groups=groups)


@pytest.mark.parametrize("configured", [
    EAST,
    r"CN=Window\, East, OU=Groups, DC=District, DC=Example",
    rf"cn=window\2C east,{GROUPS}",
    rf"cn = WINDOW\,  EAST ,{GROUPS}",
])
def test_a_group_with_an_escaped_comma_grants_its_role(configured: str) -> None:
    # the directory returns the group in its own spelling (here: hex escape, upper case)
    mine = [r"CN=Window\2C East,OU=Groups,DC=District,DC=Example"]
    assert roles_for(mine, RoleMap(helpdesk=(configured,))) == {Role.HELPDESK}
    assert entitled(pool(configured), mine)


def test_an_escaped_comma_does_not_match_two_rdns() -> None:
    two_rdns = f"cn=Window,cn=East,{GROUPS}"
    assert roles_for([two_rdns], RoleMap(system_admin=(EAST,))) == frozenset()
    assert not entitled(pool(EAST), [two_rdns])


@pytest.mark.parametrize("configured", [
    f"cn=it-ops,{GROUPS}",
    "CN=IT-Ops,OU=Groups,DC=District,DC=Example",
    "cn=it-ops, ou=groups, dc=district, dc=example",
    "  cn = it-ops ,ou = groups,dc=district,dc=example  ",
])
def test_spacing_and_case_variants_still_match(configured: str) -> None:
    mine = [f"cn=it-ops,{GROUPS}", f"cn=window-staff,{GROUPS}"]
    role_map = RoleMap(system_admin=(configured,), staff=(f"CN=Window-Staff,{GROUPS}",))
    assert roles_for(mine, role_map) == {Role.SYSTEM_ADMIN, Role.STAFF}
    assert entitled(pool(configured), mine)


def test_deny_by_default() -> None:
    mine = [f"cn=it-ops,{GROUPS}"]
    assert roles_for(mine, RoleMap()) == frozenset()
    assert roles_for([], RoleMap(system_admin=(f"cn=it-ops,{GROUPS}",))) == frozenset()
    assert not entitled(pool(), mine)
    assert not entitled(pool(f"cn=other,{GROUPS}"), mine)


def test_a_configured_value_that_is_no_dn_grants_nothing_and_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    mine = [f"cn=it-ops,{GROUPS}"]
    with caplog.at_level(logging.WARNING, logger="broker.roles"):
        assert roles_for(mine, RoleMap(system_admin=("it-ops", f"cn=it-ops,{GROUPS}"))) == {
            Role.SYSTEM_ADMIN}
        assert not entitled(pool("it-ops"), mine)
    assert [r.getMessage() for r in caplog.records] == [
        "configured group is ignored: not a DN: 'it-ops' ('it-ops' is not type=value)"] * 2


ADMINS = RoleMap(system_admin=(f"cn=vdi-admins,{GROUPS}",),
                 security_admin=(f"cn=vdi-security,{GROUPS}",),
                 audit_admin=(f"cn=vdi-auditors,{GROUPS}",),
                 helpdesk=(f"cn=helpdesk,{GROUPS}",))


@pytest.mark.parametrize("groups, held, withheld_ones", [
    (["vdi-admins"], {Role.SYSTEM_ADMIN}, set()),
    (["vdi-security"], {Role.SECURITY_ADMIN}, set()),
    (["vdi-auditors"], {Role.AUDIT_ADMIN}, set()),
    (["vdi-admins", "helpdesk"], {Role.SYSTEM_ADMIN, Role.HELPDESK}, set()),
    # two of the three administrators: neither (三员分立), the rest kept
    (["vdi-admins", "vdi-auditors"], set(), {Role.SYSTEM_ADMIN, Role.AUDIT_ADMIN}),
    (["vdi-security", "vdi-auditors", "helpdesk"], {Role.HELPDESK},
     {Role.SECURITY_ADMIN, Role.AUDIT_ADMIN}),
    (["vdi-admins", "vdi-security", "vdi-auditors"], set(),
     {Role.SYSTEM_ADMIN, Role.SECURITY_ADMIN, Role.AUDIT_ADMIN}),
], ids=["system", "security", "audit", "system+helpdesk", "system+audit",
        "security+audit+helpdesk", "all-three"])
def test_no_one_holds_two_administrator_roles(groups: list[str], held: set[Role],
                                              withheld_ones: set[Role]) -> None:
    dns = [f"cn={g},{GROUPS}" for g in groups]
    assert roles_for(dns, ADMINS) == held
    assert withheld(mapped_roles(dns, ADMINS)) == withheld_ones


def test_the_old_admin_groups_setting_grants_the_system_administrator() -> None:
    from vdi.settings import Settings

    settings = Settings(role_admin_groups=(f"cn=vdi-admins,{GROUPS}",))
    assert roles_for([f"cn=vdi-admins,{GROUPS}"], settings.role_map) == {Role.SYSTEM_ADMIN}
