"""Map a user's full group DNs to roles and pool entitlements. Deny by default.

Both sides are compared as broker.auth.directory.normalize_dn forms: the directory's
groups come normalised already; configured DNs (role map, pool entitlements) are
normalised here, so spelling (case, spaces, `\\,` or `\\2C`) never decides access.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from broker.auth.directory import normalize_dn
from vdi.domain import ADMIN_ROLES, Pool, Role
from vdi.settings import RoleMap

log = logging.getLogger(__name__)


def _normalized(dns: Iterable[str]) -> set[str]:
    """normalize_dn of each DN; a configured value that is not a DN matches no group
    (logged: it is a configuration mistake that would otherwise grant nothing silently)."""
    keys = set()
    for dn in dns:
        try:
            keys.add(normalize_dn(dn))
        except ValueError as e:
            log.warning("configured group is ignored: %s", e)
    return keys


def mapped_roles(groups: Iterable[str], role_map: RoleMap) -> frozenset[Role]:
    """Every role the user's groups map to, before the administrators' separation."""
    mine = _normalized(groups)
    roles: set[Role] = set()
    for role, dns in ((Role.SYSTEM_ADMIN, role_map.system_admin),
                      (Role.SECURITY_ADMIN, role_map.security_admin),
                      (Role.AUDIT_ADMIN, role_map.audit_admin),
                      (Role.HELPDESK, role_map.helpdesk), (Role.STAFF, role_map.staff)):
        if mine & _normalized(dns):
            roles.add(role)
    return frozenset(roles)


def withheld(mapped: frozenset[Role]) -> frozenset[Role]:
    """Of the roles groups map to, the administrator roles withheld because there are
    two or more of them (三员分立: no one holds two); empty when there is no conflict."""
    admin = mapped & ADMIN_ROLES
    return admin if len(admin) > 1 else frozenset()


def roles_for(groups: Iterable[str], role_map: RoleMap) -> frozenset[Role]:
    """The roles a user holds: those their groups map to, less every administrator role
    when they map to more than one."""
    mapped = mapped_roles(groups, role_map)
    return mapped - withheld(mapped)


def entitled(pool: Pool, groups: Iterable[str]) -> bool:
    return groups_entitled(pool.entitled_groups, groups)


def groups_entitled(pool_groups: Iterable[str], groups: Iterable[str]) -> bool:
    """Whether a user of `groups` may use a pool entitled to `pool_groups`."""
    return bool(_normalized(groups) & _normalized(pool_groups))
