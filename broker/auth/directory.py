"""The staff directory's contract: who may sign in, under which name, in which groups.

`Directory` is the one-method interface the rest of the broker uses; the real adapter is
broker.auth.ldap.LdapDirectory, the in-memory one broker.auth.fake_directory.FakeDirectory.
The same contract tests run against both (tests/broker/auth/test_directory.py).

`authenticate` BLOCKS on network I/O: call it from a worker thread, never from the
event loop. Errors come out as this module's exceptions only:

- `InvalidCredentials`: the caller shows one generic message, whatever the `reason`
  (unknown user, wrong password, blank input, ambiguous match...). `reason` is for
  logs and the audit trail, never for the person at the login form.
- `DirectoryUnavailable`: the directory cannot answer (down, refusing, hanging, TLS
  failure, misconfiguration); the caller answers 503 and falls back to nothing.

Also here, shared by the adapters and by whoever compares names: the one DN normaliser
(`normalize_dn`, used for directory groups and configured groups alike) and the one
user-name fold (`fold_username`, how the directory matches a typed name).
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

MAX_USERNAME_LENGTH = 64
MAX_PASSWORD_LENGTH = 1024
# Levels of group-in-group nesting followed above a user's direct groups.
MAX_GROUP_NESTING = 10
# Unicode categories refused in usernames: control, format (zero-width, bidi), surrogate.
_BAD_USERNAME_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})
# RFC 4514 attribute types: a descriptor or a numeric OID.
_ATTRIBUTE_TYPE = re.compile(r"(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*)\Z")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
# Characters a value must escape (RFC 4514 2.4); '=' too, so the output has one spelling.
_ESCAPED = frozenset(',+"\\<>;=')
# Characters RFC 4514 forbids unescaped in a value; ',' and '+' end the value instead.
_MUST_BE_ESCAPED = frozenset('"<>;\x00')


@dataclass(frozen=True)
class DirectoryUser:
    """One signed-in account. `username` is the directory's stored value of the user
    attribute, exactly as stored (never the typed spelling): the one identity for
    sessions, desktops, throttling and audit."""

    username: str
    dn: str
    display_name: str
    groups: frozenset[str]  # normalize_dn() of every group, nested groups resolved


SEARCH_LIMIT = 20  # people a helpdesk search returns at most


class DirectoryError(Exception):
    """Base of everything the directory adapters raise."""


class InvalidCredentials(DirectoryError):
    """Login refused. str() is the same generic text for every cause; see `reason`."""

    def __init__(self, reason: str = "") -> None:
        super().__init__("invalid username or password")
        self.reason = reason


class DirectoryUnavailable(DirectoryError):
    """The directory could not give an answer; the message says why, for operators."""


class Directory(Protocol):
    def authenticate(self, username: str, password: str) -> DirectoryUser:
        """Check the password and return the user with all their groups.

        BLOCKS (run in a worker thread). Raises InvalidCredentials or
        DirectoryUnavailable; never returns a user for blank input. The returned
        username is the stored one: every spelling the directory accepts for one
        account gives the same DirectoryUser.
        """
        ...

    def lookup(self, username: str) -> DirectoryUser | None:
        """The user as the directory has them now (account and all groups), found with
        the service account; None when the account is gone. Used to re-check a
        session's user without their password.

        BLOCKS (run in a worker thread). Raises DirectoryUnavailable.
        """
        ...

    def search(self, text: str, limit: int = SEARCH_LIMIT) -> list[DirectoryUser]:
        """People whose account starts with `text` or whose name contains it (Chinese
        names included), at most `limit`, ordered by account, each with all their
        groups; [] for blank or unprintable text. For the helpdesk's search.

        BLOCKS (run in a worker thread). Raises DirectoryUnavailable.
        """
        ...


def search_text(text: str) -> str | None:
    """The text a search looks for, or None when there is nothing to search for (blank,
    longer than 64 characters, or holding a control character)."""
    folded = " ".join(text.split())
    if not folded or len(folded) > 64 or not folded.isprintable():
        return None
    return folded


def fold_username(name: str) -> str:
    """The key under which a directory matches user names: Unicode compatibility forms
    (NFKC: fullwidth letters, no-break and ideographic spaces), case, and surrounding
    and repeated spaces do not count. Mirrors LDAP caseIgnoreMatch with RFC 4518
    string preparation, which is how OpenLDAP matches `uid` (and DN values, below)."""
    return _case_ignore(name)


def _case_ignore(text: str) -> str:
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(folded.split())


@functools.lru_cache(maxsize=4096)
def normalize_dn(dn: str) -> str:
    """The one form in which DNs are compared (directory groups and configured ones).

    Parses RFC 4514: RDNs separated by unescaped ',', multi-valued RDNs by unescaped
    '+', escapes `\\,` and `\\2C` alike (so `cn=Window\\, East,ou=groups` is two RDNs,
    the first with the value "Window, East"). Insignificant in the comparison: the case
    of attribute types and values, Unicode compatibility forms, spaces around separators
    and runs of spaces inside values, the order of a multi-valued RDN's parts. The
    result is itself a DN in RFC 4514 syntax (special characters escaped with a
    backslash), and normalize_dn(result) == result. Attribute types are compared as
    written (`cn` and its OID 2.5.4.3 differ). Pure; cached.

    Raises ValueError ("not a DN: ...") for text that is not a DN.
    """
    text = dn.strip()
    if not text:
        raise ValueError(f"not a DN: {dn!r} (empty)")
    try:
        rdns = [_normalize_rdn(rdn) for rdn in _split_unescaped(text, ",")]
    except ValueError as e:
        raise ValueError(f"not a DN: {dn!r} ({e})") from None
    return ",".join(rdns)


def _split_unescaped(text: str, separator: str) -> list[str]:
    """`text` cut at each `separator` not preceded by an escaping backslash."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for c in chars:
        if c == "\\":
            escaped = next(chars, None)
            if escaped is None:
                raise ValueError("ends in a lone backslash")
            current += (c, escaped)
        elif c == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    parts.append("".join(current))
    return parts


def _normalize_rdn(rdn: str) -> str:
    avas = sorted(_normalize_ava(ava) for ava in _split_unescaped(rdn, "+"))
    return "+".join(f"{kind}={value}" for kind, value in avas)


def _normalize_ava(ava: str) -> tuple[str, str]:
    kind, sep, raw = ava.partition("=")  # a type holds no '=' nor '\\': the first one splits
    kind = kind.strip()
    if not sep or not kind:
        raise ValueError(f"{ava.strip()!r} is not type=value")
    if not _ATTRIBUTE_TYPE.match(kind):
        raise ValueError(f"{kind!r} is not an attribute type")
    if raw.lstrip().startswith("#"):  # a BER-encoded value in hex (RFC 4514 2.4)
        hexstring = raw.strip()
        if len(hexstring) < 3 or len(hexstring) % 2 == 0 or not set(hexstring[1:]) <= _HEX_DIGITS:
            raise ValueError(f"{hexstring!r} is not a hex string")
        return kind.lower(), hexstring.lower()
    # spaces are stripped after unescaping: a trailing escaped space is a space too
    return kind.lower(), _escape(_case_ignore(_unescape(raw)))


def _unescape(raw: str) -> str:
    """The value of an RFC 4514 string: `\\c` is c, `\\XX` a byte of UTF-8."""
    data = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == "\\":
            pair = raw[i + 1:i + 3]
            if raw[i + 1] in _HEX_DIGITS:
                if len(pair) != 2 or pair[1] not in _HEX_DIGITS:
                    raise ValueError(f"bad hex escape {raw[i:i + 3]!r}")
                data.append(int(pair, 16))
                i += 3
                continue
            data += raw[i + 1].encode()
            i += 2
            continue
        if c in _MUST_BE_ESCAPED:
            raise ValueError(f"unescaped {c!r} in a value")
        data += c.encode()
        i += 1
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("hex escapes are not UTF-8") from None


def _escape(value: str) -> str:
    escaped = "".join(f"\\{c}" if c in _ESCAPED else "\\00" if c == "\x00" else c
                      for c in value)
    return "\\" + escaped if escaped.startswith("#") else escaped


def check_credentials_shape(username: str, password: str) -> None:
    """Refuse input that must never reach the directory. Raises InvalidCredentials."""
    if not username.strip():
        raise InvalidCredentials("blank username")
    if not password.strip():
        raise InvalidCredentials("blank password")
    if len(username) > MAX_USERNAME_LENGTH:
        raise InvalidCredentials("username too long")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidCredentials("password too long")
    if any(unicodedata.category(c) in _BAD_USERNAME_CATEGORIES for c in username):
        raise InvalidCredentials("control or format character in username")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidCredentials("password is not valid Unicode") from None


def resolve_nested_groups(
    direct: Iterable[str], parents_of: Callable[[list[str]], Iterable[str]]
) -> frozenset[str]:
    """All groups reachable from `direct` through `parents_of`, as normalize_dn() forms.

    `parents_of(dns)` returns the DNs of the groups that have any of `dns` as a member.
    Cycle-safe; follows at most MAX_GROUP_NESTING levels above the direct groups.
    """
    found: set[str] = set()
    frontier: list[str] = []
    for dn in direct:
        key = normalize_dn(dn)
        if key not in found:
            found.add(key)
            frontier.append(dn)
    for _level in range(MAX_GROUP_NESTING):
        if not frontier:
            break
        parents = parents_of(frontier)
        frontier = []
        for dn in parents:
            key = normalize_dn(dn)
            if key not in found:
                found.add(key)
                frontier.append(dn)
    else:
        if frontier:
            log.warning("groups nested deeper than %d levels were ignored: %s",
                        MAX_GROUP_NESTING, sorted(frontier))
    return frozenset(found)
