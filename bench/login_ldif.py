"""The demo directory plus N generated window clerks, as an LDIF for a throwaway slapd.

Clerks are `clerk001`, `clerk002`, ... (password DEMO_PASSWORD, each with its own salted
hash), spread over street offices of `per_office` clerks each: group
`cn=office-NN-window` lists its clerks and is itself a member of `cn=window-staff`, the
way the demo's street-office groups are. So every login resolves one level of group
nesting, as a real clerk's does.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from harness.ldap_server import DEMO_LDIF, DEMO_PASSWORD, GROUP_BASE, USER_BASE

WINDOW_STAFF = f"cn=window-staff,{GROUP_BASE}"


def clerk_name(n: int) -> str:
    return f"clerk{n:03d}"


def ssha(password: str) -> str:
    """OpenLDAP's {SSHA}: SHA-1 over password + 8-byte salt, then the salt (RFC 2307 style).
    The scheme slapd checks binds against, not a choice made here."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt, usedforsecurity=False).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def office_group(office: int) -> str:
    return f"cn=office-{office:02d}-window,{GROUP_BASE}"


def clerks_ldif(count: int, per_office: int = 50, password: str = DEMO_PASSWORD) -> str:
    """The demo directory with `count` clerks added (window-staff gets the office groups)."""
    demo = DEMO_LDIF.read_text(encoding="utf-8")
    offices = (count + per_office - 1) // per_office
    marker = f"dn: {WINDOW_STAFF}\n"
    if marker not in demo:
        raise ValueError(f"{DEMO_LDIF} has no entry {WINDOW_STAFF}")
    # add the office groups as members of window-staff: its entry ends at a blank line
    start = demo.index(marker)
    end = demo.find("\n\n", start)
    end = len(demo.rstrip("\n")) if end < 0 else end
    extra_members = "".join(f"\nmember: {office_group(o)}" for o in range(1, offices + 1))
    text = demo[:end] + extra_members + demo[end:]
    parts = [text.rstrip("\n") + "\n"]
    for n in range(1, count + 1):
        name = clerk_name(n)
        parts.append(
            f"\ndn: uid={name},{USER_BASE}\n"
            "objectClass: top\nobjectClass: person\nobjectClass: organizationalPerson\n"
            f"objectClass: inetOrgPerson\nuid: {name}\ncn: Clerk {n}\nsn: Clerk\n"
            f"displayName: Clerk {n:03d}\nou: office {(n - 1) // per_office + 1:02d}\n"
            f"userPassword: {ssha(password)}\n")
    for o in range(1, offices + 1):
        members = "".join(
            f"member: uid={clerk_name(n)},{USER_BASE}\n"
            for n in range((o - 1) * per_office + 1, min(o * per_office, count) + 1))
        parts.append(f"\ndn: {office_group(o)}\nobjectClass: top\nobjectClass: groupOfNames\n"
                     f"cn: office-{o:02d}-window\n{members}")
    return "".join(parts)


def write_clerks_ldif(path: Path, count: int, per_office: int = 50) -> Path:
    path.write_text(clerks_ldif(count, per_office), encoding="utf-8")
    return path
