"""The one DN normaliser (broker.auth.directory.normalize_dn), as a table of cases."""

from __future__ import annotations

import pytest

from broker.auth.directory import normalize_dn

GROUPS = "ou=groups,dc=district,dc=example"


@pytest.mark.parametrize(("dn", "expected"), [
    ("cn=window-staff,ou=groups,dc=district,dc=example",
     "cn=window-staff,ou=groups,dc=district,dc=example"),
    # case of types and values, spaces around separators and around the whole DN
    ("CN=Window-Staff, OU=Groups,DC=District,DC=Example",
     "cn=window-staff,ou=groups,dc=district,dc=example"),
    ("  cn = Window-Staff ,  ou=groups , dc=district,dc=example ",
     "cn=window-staff,ou=groups,dc=district,dc=example"),
    # an escaped comma is part of the value: still four RDNs, the first "window, east"
    (r"cn=Window\, East,ou=groups,dc=district,dc=example",
     r"cn=window\, east,ou=groups,dc=district,dc=example"),
    # the same value escaped as a hex pair, and with spaces after the separators
    (r"CN=WINDOW\2C EAST, OU=Groups, DC=District, DC=Example",
     r"cn=window\, east,ou=groups,dc=district,dc=example"),
    # runs of spaces inside a value are one space
    (r"cn=Window\,   East,ou=groups,dc=district,dc=example",
     r"cn=window\, east,ou=groups,dc=district,dc=example"),
    # UTF-8 as characters or as hex pairs; fullwidth letters are their ASCII forms
    ("cn=东街窗口,ou=groups,dc=x", "cn=东街窗口,ou=groups,dc=x"),
    (r"cn=\E4\B8\9C\E8\A1\97窗口,ou=groups,dc=x", "cn=东街窗口,ou=groups,dc=x"),
    ("cn=ＷＩＮＤＯＷ,dc=x", "cn=window,dc=x"),
    # every escapable character; '=' inside a value needs no escape but gets one
    (r"cn=a\+b\;c\<d\>e\"f\\g,dc=x", r"cn=a\+b\;c\<d\>e\"f\\g,dc=x"),
    ("cn=a=b,dc=x", r"cn=a\=b,dc=x"),
    (r"cn=\#1,dc=x", r"cn=\#1,dc=x"),
    (r"cn=\ lead and trail\ ,dc=x", "cn=lead and trail,dc=x"),
    # multi-valued RDNs: order does not matter
    ("uid=zs+cn=Zhang,dc=x", "cn=zhang+uid=zs,dc=x"),
    ("CN=Zhang + UID=zs,dc=x", "cn=zhang+uid=zs,dc=x"),
    # numeric OIDs and BER hex values are kept as written (lower case)
    ("2.5.4.3=Window,dc=x", "2.5.4.3=window,dc=x"),
    ("cn=#04024869,dc=x", "cn=#04024869,dc=x"),
    ("cn=,dc=x", "cn=,dc=x"),
])
def test_normal_forms(dn: str, expected: str) -> None:
    assert normalize_dn(dn) == expected
    assert normalize_dn(expected) == expected  # the normal form is a fixed point


def test_escaped_comma_is_not_a_separator() -> None:
    # the old comma-splitting normaliser made these two DNs (five RDNs vs four) equal
    # to nothing the directory returns; here they differ from each other as they should
    escaped = normalize_dn(rf"cn=Window\, East,{GROUPS}")
    assert escaped.count(",") - escaped.count("\\,") == 3
    assert escaped != normalize_dn(f"cn=Window,cn=East,{GROUPS}")


@pytest.mark.parametrize("dn", [
    "", "   ", "window-staff", "cn=a,,dc=x", "cn=a,dc=x,", ",cn=a", "=a,dc=x",
    "cn=a\\", r"cn=a\4,dc=x", r"cn=a\zz\4", r"cn=\ff,dc=x", 'cn="a,b",dc=x',
    "cn=a;dc=x", "c n=a,dc=x", "cn=#0g,dc=x", "cn=#123,dc=x", "cn=a+,dc=x",
])
def test_not_a_dn(dn: str) -> None:
    with pytest.raises(ValueError, match="not a DN"):
        normalize_dn(dn)
