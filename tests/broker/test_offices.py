"""Street offices and the scope of a person's work (broker.offices): a district-level
administrator reaches every office, a helpdesk member the offices whose helpdesk groups
they are in and nothing when in none (deny by default), a clerk none; the office
records are checked before they are kept (real SQLite)."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from broker.offices import NOWHERE, OfficeError, OfficeStore, Scope, offices_of, scope_of
from vdi.domain import Office, Principal, Role

G = "ou=groups,dc=district,dc=example"
EAST = Office("dongjie", "东街街道办", (f"cn=dongjie-window,{G}",), (f"cn=hd-east,{G}",))
WEST = Office("xijie", "西街街道办", (f"cn=xijie-window,{G}",),
              (f"cn=hd-west,{G}", f"cn=hd-district,{G}"))
OFFICES = [EAST, WEST]


def person(roles: set[Role], *groups: str) -> Principal:
    return Principal(username="p", display_name="P", roles=frozenset(roles),
                     groups=frozenset(f"cn={g},{G}" for g in groups))


@pytest.mark.parametrize("who, expected", [
    (person({Role.SYSTEM_ADMIN}), Scope(True, frozenset())),
    (person({Role.SECURITY_ADMIN}), Scope(True, frozenset())),
    (person({Role.AUDIT_ADMIN}), Scope(True, frozenset())),
    (person({Role.HELPDESK}, "hd-east"), Scope(False, frozenset({"dongjie"}))),
    (person({Role.HELPDESK}, "hd-east", "hd-district"),
     Scope(False, frozenset({"dongjie", "xijie"}))),
    # a helpdesk member in no office's helpdesk group reaches nothing
    (person({Role.HELPDESK}, "helpdesk"), NOWHERE),
    # a helpdesk group without the helpdesk role grants nothing either
    (person({Role.STAFF}, "hd-east"), NOWHERE),
    (person(set(), "dongjie-window"), NOWHERE),
], ids=["system", "security", "audit", "helpdesk-east", "helpdesk-both",
        "helpdesk-nowhere", "staff-in-hd-group", "clerk"])
def test_the_scope_of_a_persons_work(who: Principal, expected: Scope) -> None:
    assert scope_of(who, OFFICES) == expected


def test_what_a_scope_covers() -> None:
    east = Scope(False, frozenset({"dongjie"}))
    assert east.covers("dongjie") and not east.covers("xijie")
    assert not east.covers(None)  # the district's own pools are not an office's
    assert Scope(True, frozenset()).covers(None) and Scope(True, frozenset()).covers("xijie")
    assert not NOWHERE.covers("dongjie")


def test_a_clerk_belongs_to_the_offices_of_their_groups() -> None:
    assert offices_of([f"CN=Dongjie-Window,{G}"], OFFICES) == {"dongjie"}
    assert offices_of([f"cn=other,{G}"], OFFICES) == frozenset()


def test_offices_are_kept_and_checked(db: sessionmaker[Session]) -> None:
    store = OfficeStore(db)
    assert store.save(EAST) is True
    assert store.save(EAST) is False  # saved again: changed, not new
    assert store.office("dongjie") == EAST and store.offices() == [EAST]
    for bad, why in ((Office("East Side", "x"), "office id"),
                     (Office("east", " "), "office name"),
                     (Office("east", "东", ("not a dn",)), "not a group DN")):
        with pytest.raises(OfficeError, match=why):
            store.save(bad)
    assert store.offices() == [EAST]
