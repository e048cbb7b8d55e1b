"""Map a user's full group DNs to roles and pool entitlements. Deny by default."""

from __future__ import annotations

from collections.abc import Iterable

from vdi.domain import Pool, Role
from vdi.settings import RoleMap


def normalise_dn(dn: str) -> str:
    """Case and spacing around ',' and '=' do not matter in DN comparison here."""
    parts = [p.strip() for p in dn.split(",")]
    return ",".join("=".join(s.strip() for s in p.split("=", 1)) for p in parts).lower()


def roles_for(groups: Iterable[str], role_map: RoleMap) -> frozenset[Role]:
    mine = {normalise_dn(g) for g in groups}
    roles: set[Role] = set()
    for role, dns in ((Role.ADMIN, role_map.admin), (Role.HELPDESK, role_map.helpdesk),
                      (Role.STAFF, role_map.staff)):
        if mine & {normalise_dn(d) for d in dns}:
            roles.add(role)
    return frozenset(roles)


def entitled(pool: Pool, groups: Iterable[str]) -> bool:
    mine = {normalise_dn(g) for g in groups}
    return bool(mine & {normalise_dn(d) for d in pool.entitled_groups})
