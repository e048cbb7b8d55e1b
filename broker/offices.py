"""Street offices (街道办) and what each person may see of them.

An office is a record: its clerks are known by their directory groups, and so are the
helpdesk members who serve it. A pool may belong to an office. `scope_of` says which
offices a person's work reaches: a district-level administrator all of them; a helpdesk
member the offices whose helpdesk groups they are in, and nothing when they are in none
(deny by default); anyone else none. The helpdesk's use cases filter by this scope, and
answer for an object outside it exactly as for one that does not exist.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.roles import groups_entitled
from vdi.domain import ADMIN_ROLES, Office, Principal, Role, utc_now
from vdi.models import OfficeRow

OFFICE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


class OfficeError(ValueError):
    """An office cannot be saved as given; the message says why."""


@dataclass(frozen=True)
class Scope:
    """The offices a person's work reaches: every one (`district`), or those listed."""

    district: bool
    offices: frozenset[str]

    def covers(self, office: str | None) -> bool:
        """Whether an object of `office` (None: the district's own) is within reach."""
        return self.district or (office is not None and office in self.offices)


NOWHERE = Scope(False, frozenset())


def scope_of(principal: Principal, offices: Iterable[Office]) -> Scope:
    if principal.roles & ADMIN_ROLES:
        return Scope(True, frozenset())
    if Role.HELPDESK not in principal.roles:
        return NOWHERE
    return Scope(False, frozenset(o.id for o in offices
                                  if groups_entitled(o.helpdesk_groups, principal.groups)))


def offices_of(groups: Iterable[str], offices: Iterable[Office]) -> frozenset[str]:
    """The offices whose clerks' groups a person's groups are in."""
    mine = list(groups)
    return frozenset(o.id for o in offices if groups_entitled(o.clerk_groups, mine))


def office_from_row(row: OfficeRow) -> Office:
    return Office(id=row.id, name=row.name, clerk_groups=tuple(row.clerk_groups),
                  helpdesk_groups=tuple(row.helpdesk_groups))


class OfficeStore:
    def __init__(self, sessions: sessionmaker[Session],
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._sessions = sessions
        self._clock = clock

    def offices(self) -> list[Office]:
        with self._sessions() as s:
            return [office_from_row(r) for r in s.scalars(select(OfficeRow).order_by(
                OfficeRow.id))]

    def office(self, office_id: str) -> Office | None:
        with self._sessions() as s:
            row = s.get(OfficeRow, office_id)
            return office_from_row(row) if row else None

    def save(self, office: Office) -> bool:
        """Create or change an office; True when new. Raises OfficeError."""
        if not OFFICE_ID.match(office.id):
            raise OfficeError("office id: 1-32 lower-case letters, digits or '-', "
                              "starting with a letter or digit")
        if not office.name.strip() or len(office.name) > 200 or not office.name.isprintable():
            raise OfficeError("office name: 1-200 printable characters")
        for dn in (*office.clerk_groups, *office.helpdesk_groups):
            if "=" not in dn or len(dn) > 1024:
                raise OfficeError(f"not a group DN: {dn[:80]!r}")
        with self._sessions.begin() as s:
            row = s.get(OfficeRow, office.id)
            new = row is None
            if row is None:
                row = OfficeRow(id=office.id, created_at=self._clock())
                s.add(row)
            row.name = office.name.strip()
            row.clerk_groups = list(office.clerk_groups)
            row.helpdesk_groups = list(office.helpdesk_groups)
            return new
