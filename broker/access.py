"""Who may do what: the permission table, and a session turned into a principal.

Routes declare the permission they need (web.access); this module is the one place that
says which roles hold it. Entitlement to a pool is checked by the use case (the pool's
groups), not here.
"""

from __future__ import annotations

from vdi.domain import Permission, Principal, Role

# Any live session holds SIGNED_IN: a clerk may have no role at all and still be
# entitled to pools through their groups.
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.STAFF: frozenset(),
    Role.HELPDESK: frozenset({Permission.READ_RECLAIMS, Permission.HELPDESK,
                              Permission.API_TOKENS}),
    Role.SYSTEM_ADMIN: frozenset({Permission.READ_RECLAIMS, Permission.MANAGE_IMAGES,
                                  Permission.HELPDESK, Permission.VIEW_SERVICE,
                                  Permission.READ_METERING, Permission.API_TOKENS,
                                  Permission.MANAGE_SERVICE}),
    # ending anyone's session, and revoking anyone's API token
    Role.SECURITY_ADMIN: frozenset({Permission.MANAGE_SESSIONS, Permission.API_TOKENS}),
    # reads everything recorded, changes nothing (but its own API tokens)
    Role.AUDIT_ADMIN: frozenset({Permission.READ_AUDIT, Permission.READ_RECLAIMS,
                                 Permission.READ_METERING, Permission.API_TOKENS}),
}


def permissions_of(principal: Principal) -> frozenset[Permission]:
    held = {Permission.SIGNED_IN}
    for role in principal.roles:
        held |= ROLE_PERMISSIONS[role]
    return frozenset(held)


def allows(principal: Principal, permission: Permission) -> bool:
    return permission in permissions_of(principal)


def roles_text(principal: Principal) -> str:
    """The roles as the audit log writes them."""
    return ",".join(sorted(r.value for r in principal.roles)) or "-"
