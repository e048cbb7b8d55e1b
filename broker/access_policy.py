"""The security administrator's access policy, kept in the database so every broker
follows one (and a change needs no file edit and no restart): the networks from which
the administrators' and helpdesk's pages and API may be used, the session limits, and
the directory groups that grant each role (instead of the TOML's `[role]` groups).

Each broker reads the policy at most every `ttl_s` seconds (`current`), so a change
reaches every broker within seconds; between reads the last one is used (`cached`),
which never blocks. A change is a compare-and-set on the policy's version (two security
administrators editing at once cannot overwrite each other unseen), is refused when it
would lock its author out, and is recorded with its reason.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from broker.access import roles_text
from broker.blocking import Blocking
from broker.errors import BadRequest, BrokerError
from broker.roles import roles_for
from vdi.audit import AuditLog
from vdi.db import rows_changed
from vdi.domain import Principal, Role, utc_now
from vdi.models import AccessPolicyRow
from vdi.settings import RoleMap

ROLE_KEYS = ("staff", "helpdesk", "system_admin", "security_admin", "audit_admin")
MAX_NETWORKS = 64
MAX_GROUPS = 50
IDLE_S = (60, 24 * 3600)
ABSOLUTE_S = (300, 7 * 24 * 3600)
REASON_CHARS = (4, 500)
REFUSAL_EVERY_S = 300.0
# what a malformed policy is told (web.errors shows these, translated)
NETWORKS_MESSAGE = "admin_networks must list at most 64 networks such as 10.20.0.0/16."
BOUNDS_MESSAGES = {
    "session_idle_s": "session_idle_s must be empty or 60 to 86400 seconds.",
    "session_absolute_s": "session_absolute_s must be empty or 300 to 604800 seconds."}
IDLE_OVER_ABSOLUTE = "session_idle_s must not be longer than session_absolute_s."
GROUPS_MESSAGE = ("role_groups must be empty, or list for each role at most 50 group DNs "
                  "such as cn=helpdesk,ou=groups,dc=example.")
NO_SECURITY_ADMIN = ("role_groups.security_admin must name a group: without one no one "
                     "could change this policy again.")
REASON_MESSAGE = "Give a reason of 4 to 500 characters."


class PolicyChanged(BrokerError):
    """The policy was changed by someone else since the caller read it."""

    code = "policy_changed"


class LockoutRefused(BrokerError):
    """The change would take away its author's own access (their address outside the
    admin networks, or no group of theirs left for the security administrator)."""

    code = "would_lock_out"


class NetworkRefused(BrokerError):
    """An administrator's or helpdesk request from outside the admin networks."""

    code = "network_not_allowed"


@dataclass(frozen=True)
class AccessPolicy:
    """None or empty: the setting of the broker's configuration applies."""

    admin_networks: tuple[str, ...] = ()  # empty: any network
    session_idle_s: int | None = None
    session_absolute_s: int | None = None
    role_groups: RoleMap | None = None

    def to_json(self) -> dict[str, object]:
        g = self.role_groups
        return {"admin_networks": list(self.admin_networks),
                "session_idle_s": self.session_idle_s,
                "session_absolute_s": self.session_absolute_s,
                "role_groups": None if g is None else {k: list(getattr(g, k))
                                                       for k in ROLE_KEYS}}

    def admits(self, address: str) -> bool:
        """Whether an administrator or helpdesk request from `address` is allowed."""
        if not self.admin_networks:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack listener's view of an IPv4 client
        return any(ip in ipaddress.ip_network(n) for n in self.admin_networks)


def _int(data: Mapping[str, object], key: str, bounds: tuple[int, int]) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not (
            bounds[0] <= value <= bounds[1]):
        raise BadRequest(BOUNDS_MESSAGES[key])
    return value


def _groups(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_GROUPS or not all(
            isinstance(g, str) and 3 <= len(g.strip()) <= 512 and "=" in g
            and g.isprintable() for g in value):
        raise BadRequest(GROUPS_MESSAGE)
    return tuple(dict.fromkeys(g.strip() for g in value))


def parse_policy(data: Mapping[str, object]) -> AccessPolicy:
    """A policy from its JSON form; raises BadRequest naming what is wrong."""
    nets = data.get("admin_networks", [])
    if not isinstance(nets, list) or len(nets) > MAX_NETWORKS or not all(
            isinstance(n, str) and 0 < len(n) <= 64 for n in nets):
        raise BadRequest(NETWORKS_MESSAGE)
    networks = []
    for n in nets:
        try:
            networks.append(str(ipaddress.ip_network(n.strip(), strict=False)))
        except ValueError:
            raise BadRequest(NETWORKS_MESSAGE) from None
    idle = _int(data, "session_idle_s", IDLE_S)
    absolute = _int(data, "session_absolute_s", ABSOLUTE_S)
    if idle is not None and absolute is not None and idle > absolute:
        raise BadRequest(IDLE_OVER_ABSOLUTE)
    raw = data.get("role_groups")
    groups = None
    if raw is not None:
        if not isinstance(raw, dict) or set(raw) != set(ROLE_KEYS):
            raise BadRequest(GROUPS_MESSAGE)
        groups = RoleMap(**{k: _groups(raw[k], k) for k in ROLE_KEYS})
        if not groups.security_admin:
            raise BadRequest(NO_SECURITY_ADMIN)
    return AccessPolicy(admin_networks=tuple(dict.fromkeys(networks)),
                        session_idle_s=idle, session_absolute_s=absolute,
                        role_groups=groups)


@dataclass(frozen=True)
class PolicyRecord:
    policy: AccessPolicy
    version: int  # 0: never changed
    updated_at: datetime | None
    updated_by: str | None


def _read(db: sessionmaker[Session]) -> PolicyRecord:
    with db() as s:
        row = s.scalars(select(AccessPolicyRow).where(AccessPolicyRow.id == 1)).first()
    if row is None:
        return PolicyRecord(AccessPolicy(), 0, None, None)
    return PolicyRecord(parse_policy(row.data), row.version, row.updated_at, row.updated_by)


class PolicyStore:
    def __init__(self, *, blocking: Blocking, db: sessionmaker[Session], audit: AuditLog,
                 role_map: RoleMap, session_idle_s: int, session_absolute_s: int,
                 ttl_s: float = 5.0, clock: Callable[[], datetime] = utc_now) -> None:
        self._blocking = blocking
        self._db = db
        self._audit = audit
        self._role_map = role_map
        self._idle_s = session_idle_s
        self._absolute_s = session_absolute_s
        self._ttl_s = ttl_s
        self._clock = clock
        self._cached = AccessPolicy()
        self._read_at = float("-inf")
        self._refusals_noted: dict[tuple[str, str, str], float] = {}

    def load(self) -> AccessPolicy:
        """Read the policy now. Blocks on the database (at start-up, in a thread)."""
        self._cached = _read(self._db).policy
        self._read_at = time.monotonic()
        return self._cached

    def cached(self) -> AccessPolicy:
        """The policy as last read; never blocks."""
        return self._cached

    async def current(self) -> AccessPolicy:
        """The policy, read again when the last read is older than `ttl_s`."""
        if time.monotonic() - self._read_at >= self._ttl_s:
            await self._blocking.db(self.load)
        return self._cached

    def role_map(self) -> RoleMap:
        return self._cached.role_groups or self._role_map

    def session_limits(self) -> tuple[int, int]:
        """(idle, absolute) seconds of a session, as the policy or the settings say."""
        p = self._cached
        return (p.session_idle_s or self._idle_s, p.session_absolute_s or self._absolute_s)

    async def refused(self, who: Principal, path: str, source: str) -> None:
        """Record an administrator's or helpdesk request refused for its network: once
        per person, address and path every REFUSAL_EVERY_S here (a page left open
        outside the networks polls every few seconds; the trail keeps one line)."""
        key, at = (who.username, source, path), time.monotonic()
        if at - self._refusals_noted.get(key, float("-inf")) < REFUSAL_EVERY_S:
            return
        if len(self._refusals_noted) > 10_000:
            self._refusals_noted.clear()
        self._refusals_noted[key] = at
        await self._blocking.db(lambda: self._audit.record(
            actor=who.username, role=roles_text(who), action="network-refused",
            target=path[:255], source=source, outcome="refused",
            detail="outside the admin networks of the access policy"))

    async def read(self) -> tuple[PolicyRecord, dict[str, object]]:
        """The stored policy and what applies where it says nothing (the settings)."""
        record = await self._blocking.db(_read, self._db)
        defaults = AccessPolicy(session_idle_s=self._idle_s,
                                session_absolute_s=self._absolute_s,
                                role_groups=self._role_map).to_json()
        return record, defaults

    async def change(self, who: Principal, data: Mapping[str, object], version: int,
                     reason: str, source: str) -> PolicyRecord:
        """Store a new policy read at `version`. Raises BadRequest (malformed, or
        LockoutRefused: it would take away the author's access), PolicyChanged."""
        reason = " ".join(reason.split())
        if not REASON_CHARS[0] <= len(reason) <= REASON_CHARS[1] or not reason.isprintable():
            raise BadRequest(REASON_MESSAGE)
        policy = parse_policy(data)
        if not policy.admits(source):
            raise LockoutRefused("outside admin_networks: " + source)
        if policy.role_groups is not None and Role.SECURITY_ADMIN not in roles_for(
                who.groups, policy.role_groups):
            raise LockoutRefused("no group of the author left in security_admin")
        now = self._clock()

        def store() -> PolicyRecord:
            stored = json.loads(json.dumps(policy.to_json()))
            try:
                return write(stored)
            except IntegrityError:  # another first version was written meanwhile
                raise PolicyChanged() from None

        def write(stored: dict[str, object]) -> PolicyRecord:
            with self._db.begin() as s:
                row = s.get(AccessPolicyRow, 1)
                current = row.version if row is not None else 0
                if current != version:
                    raise PolicyChanged()
                if row is None:
                    s.add(AccessPolicyRow(id=1, data=stored, version=1, updated_at=now,
                                          updated_by=who.username))
                    s.flush()
                elif rows_changed(s.execute(update(AccessPolicyRow).where(
                        AccessPolicyRow.id == 1, AccessPolicyRow.version == version)
                        .values(data=stored, version=version + 1, updated_at=now,
                                updated_by=who.username)
                        .execution_options(synchronize_session=False))) != 1:
                    raise PolicyChanged()  # changed between the read and the write
                s.add(self._audit.row(
                    actor=who.username, role=roles_text(who), action="policy-change",
                    target="access-policy", source=source, outcome="ok",
                    detail=f"version {version + 1}; reason: {reason}; "
                           + json.dumps(stored, ensure_ascii=False, sort_keys=True)))
            return PolicyRecord(policy, version + 1, now, who.username)

        record = await self._blocking.db(store)
        self._cached = record.policy
        self._read_at = time.monotonic()
        return record


def stored_policy(db: sessionmaker[Session]) -> PolicyRecord:
    """The stored policy (for the `vdi` command). Blocks on the database."""
    return _read(db)


def reset_policy(db: sessionmaker[Session], audit: AuditLog, *, actor: str, reason: str,
                 now: datetime) -> PolicyRecord:
    """Back to the configuration file's settings (no admin networks, the file's session
    limits and role groups), recorded with the reason: the way back in when the policy
    has locked every security administrator out. Run on the broker's machine by whoever
    may read its configuration; blocks on the database. Raises BadRequest (reason)."""
    reason = " ".join(reason.split())
    if not REASON_CHARS[0] <= len(reason) <= REASON_CHARS[1] or not reason.isprintable():
        raise BadRequest(REASON_MESSAGE)
    empty = AccessPolicy().to_json()
    with db.begin() as s:
        row = s.get(AccessPolicyRow, 1)
        version = (row.version if row is not None else 0) + 1
        if row is None:
            s.add(AccessPolicyRow(id=1, data=empty, version=version, updated_at=now,
                                  updated_by=actor))
        else:
            row.data, row.version, row.updated_at, row.updated_by = empty, version, now, actor
        s.add(audit.row(actor=actor, role="local", action="policy-reset",
                        target="access-policy", source="cli", outcome="ok",
                        detail=f"version {version}: back to the configuration file; "
                               f"reason: {reason}"))
    return PolicyRecord(AccessPolicy(), version, now, actor)
