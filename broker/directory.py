"""The staff directory: who may log in, under which name, in which groups.

`Directory` is the one-method interface the rest of the broker uses. `LdapDirectory` is
the real adapter and the only module in the repository that imports ldap3;
`FakeDirectory` is an in-memory one for fast tests. The same contract tests run against
both (tests/broker/test_directory.py), the real one against a real slapd.

`authenticate` BLOCKS on network I/O: call it from a worker thread, never from the
event loop. Errors come out as this module's exceptions only:

- `InvalidCredentials`: the caller shows one generic message, whatever the `reason`
  (unknown user, wrong password, blank input, ambiguous match...). `reason` is for
  logs and the audit trail, never for the person at the login form.
- `DirectoryUnavailable`: the directory cannot answer (down, refusing, hanging, TLS
  failure, misconfiguration); the caller answers 503 and falls back to nothing.

ldap3's defaults are unsafe (docs/security.md, "LDAP"); what this adapter does instead:
blank input is refused before any traffic (an empty password is an "unauthenticated
bind" that servers report as success, RFC 4513 5.1.2); filter values are escaped and a
search must match exactly one entry; the user's bind runs on a fresh connection of its
own, closed right after, never on the service account's (and a connection that ever
carried a user's bind is never used again); referrals are not followed; certificates are
verified; plaintext ldap:// is allowed to loopback only; every socket has a timeout and
each call has an overall deadline; each URL is tried once, with no retry loop.

The service account's connections are kept bound between calls (a small pool, one
connection per thread at a time): a login then costs one TCP connection and bind (the
user's), not two. A kept connection that the server dropped while idle is replaced once
within the same call, inside its deadline.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import os
import re
import ssl
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import ldap3
from ldap3.core import exceptions as ldap_errors
from ldap3.core.results import RESULT_SIZE_LIMIT_EXCEEDED, RESULT_SUCCESS
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn

from vdi.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_USERNAME_LENGTH = 64
MAX_PASSWORD_LENGTH = 1024
# Levels of group-in-group nesting followed above a user's direct groups.
MAX_GROUP_NESTING = 10
# One authenticate() call gets this many ldap_timeout_s in total, on top of each
# operation's own timeout (a call makes 4 round trips or more).
DEADLINE_FACTOR = 2.0
# Member DNs per group search when resolving nesting (keeps filters short).
_MEMBERS_PER_QUERY = 50
# Bound service-account connections kept between calls, and for how long one may sit idle
# (firewalls and servers drop idle connections; an old one is closed rather than tried).
SERVICE_POOL_SIZE = 16
SERVICE_IDLE_S = 60.0
# Unicode categories refused in usernames: control, format (zero-width, bidi), surrogate.
_BAD_USERNAME_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*\Z")
_LOOPBACK_NAMES = frozenset({"localhost"})
# Bind results that mean "these credentials are not valid" rather than "server trouble".
_BAD_CREDENTIALS = (
    ldap_errors.LDAPInvalidCredentialsResult,
    ldap_errors.LDAPInappropriateAuthenticationResult,
)


@dataclass(frozen=True)
class DirectoryUser:
    username: str  # as the directory spells it, not as typed
    dn: str
    display_name: str
    groups: frozenset[str]  # normalize_dn() of every group, nested groups resolved


class DirectoryError(Exception):
    """Base of everything this module raises."""


class InvalidCredentials(DirectoryError):
    """Login refused. str() is the same generic text for every cause; see `reason`."""

    def __init__(self, reason: str = "") -> None:
        super().__init__("invalid username or password")
        self.reason = reason


class DirectoryUnavailable(DirectoryError):
    """The directory could not give an answer; the message says why, for operators."""


class _ConnectionFailed(DirectoryUnavailable):
    """The connection itself failed (socket error, timeout, hang-up), not the server's
    answer: a kept connection failing this way is replaced and the step tried again."""


class Directory(Protocol):
    def authenticate(self, username: str, password: str) -> DirectoryUser:
        """Check the password and return the user with all their groups.

        BLOCKS (run in a worker thread). Raises InvalidCredentials or
        DirectoryUnavailable; never returns a user for blank input.
        """
        ...


def normalize_dn(dn: str) -> str:
    """The form in which group DNs are compared: RFC 4514 syntax, lower-cased.

    Also use it on configured DNs (role map) so both sides match. Tolerates spaces
    after separators ("cn=a, ou=b"). Raises ValueError if `dn` is not a DN.
    """
    text = dn.strip()
    try:
        parts = parse_dn(text)
    except ldap_errors.LDAPInvalidDnError:
        try:
            parts = parse_dn(re.sub(r"(?<!\\)([,+])\s+", r"\1", text))
        except ldap_errors.LDAPInvalidDnError as e:
            raise ValueError(f"not a DN: {dn!r} ({e})") from e
    if not parts:
        raise ValueError("empty DN")
    return "".join(f"{attr.strip().lower()}={value.lower()}{sep}" for attr, value, sep in parts)


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


def _fold(username: str) -> str:
    """Approximates LDAP caseIgnoreMatch (case and insignificant spaces)."""
    return " ".join(username.split()).casefold()


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


_NO_GROUPS: Mapping[str, Iterable[str]] = MappingProxyType({})


class FakeDirectory:
    """In-memory directory with the same contract as LdapDirectory.

    users: username -> (password, display name, DNs of the groups it is a direct member
    of); groups: group DN -> DNs of the groups that group is itself a member of.
    Usernames match the way LDAP's uid does (case and surrounding spaces ignored).
    """

    def __init__(self, users: Mapping[str, tuple[str, str, Iterable[str]]],
                 groups: Mapping[str, Iterable[str]] = _NO_GROUPS, *,
                 user_base: str = "ou=people,dc=fake,dc=invalid") -> None:
        self._users = {
            _fold(name): (name, password, display, tuple(direct))
            for name, (password, display, direct) in users.items()
        }
        self._parents = {normalize_dn(g): tuple(parents) for g, parents in groups.items()}
        self._user_base = user_base

    def authenticate(self, username: str, password: str) -> DirectoryUser:
        check_credentials_shape(username, password)
        record = self._users.get(_fold(username))
        if record is None:
            raise InvalidCredentials("unknown user")
        name, expected, display, direct = record
        if not hmac.compare_digest(expected.encode(), password.encode()):
            raise InvalidCredentials("wrong password")
        groups = resolve_nested_groups(direct, self._parents_of)
        return DirectoryUser(name, f"uid={name},{self._user_base}", display, groups)

    def _parents_of(self, dns: list[str]) -> list[str]:
        return [p for dn in dns for p in self._parents.get(normalize_dn(dn), ())]


@dataclass(frozen=True)
class _Endpoint:
    host: str
    port: int
    use_ssl: bool

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'ldaps' if self.use_ssl else 'ldap'}://{host}:{self.port}"


class _Deadline:
    """One authenticate() call's time budget; each step gets min(op timeout, what is left)."""

    def __init__(self, op_timeout_s: float) -> None:
        self._op_timeout_s = op_timeout_s
        self._end = time.monotonic() + DEADLINE_FACTOR * op_timeout_s

    def step(self, what: str) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            raise DirectoryUnavailable(f"directory too slow: no time left for {what}")
        return min(self._op_timeout_s, left)


def _parse_endpoints(urls: str) -> list[_Endpoint]:
    endpoints = []
    for url in urls.split():
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError as e:
            raise DirectoryUnavailable(f"ldap_url {url!r}: bad port") from e
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise DirectoryUnavailable(f"ldap_url {url!r}: expected ldap://host or ldaps://host")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise DirectoryUnavailable(f"ldap_url {url!r}: only scheme, host and port allowed")
        use_ssl = parts.scheme == "ldaps"
        if not use_ssl and not _is_loopback(parts.hostname):
            raise DirectoryUnavailable(
                f"ldap_url {url!r}: plaintext ldap:// would send passwords in clear; "
                "it is allowed only to loopback (127.0.0.0/8, ::1, localhost); use ldaps://")
        endpoints.append(_Endpoint(parts.hostname, port or (636 if use_ssl else 389), use_ssl))
    if not endpoints:
        raise DirectoryUnavailable("ldap_url is empty")
    return endpoints


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """ldap3 and socket errors become DirectoryUnavailable naming the failed step."""
    try:
        yield
    except DirectoryError:
        raise
    except ldap_errors.LDAPOperationResult as e:
        raise DirectoryUnavailable(
            f"{what}: directory answered {e.description or type(e).__name__}"
            + (f" ({e.message})" if e.message else "")) from e
    except (ldap_errors.LDAPException, OSError) as e:
        raise _ConnectionFailed(f"{what}: {e}") from e


def _close(conn: Any) -> None:
    # An error here means the connection is already broken: the socket is gone either way.
    with suppress(ldap_errors.LDAPException, OSError):
        conn.unbind()


def _values(entry: Mapping[str, Any], name: str) -> list[str]:
    """Values of attribute `name` (any case) in a search result entry, decoded."""
    return [bytes(v).decode("utf-8", errors="replace")
            for key, values in entry.get("raw_attributes", {}).items()
            if key.lower() == name.lower() for v in values]


class LdapDirectory:
    """Directory backed by an LDAP server (OpenLDAP, 389-DS, AD with groupOfNames).

    Construction checks the settings and raises DirectoryUnavailable for a
    configuration that cannot work or is unsafe (plaintext ldap:// to a non-loopback
    host, missing service account, bad attribute or base DN); it opens no connection.
    ldap_url may list several URLs separated by spaces: each is tried once, in order.

    Thread-safe: each call uses a service connection no other thread uses meanwhile
    (kept ones come from a locked pool) and binds the user on a connection of its own.
    A server that hangs makes a call fail after about ldap_timeout_s; a slow one after at
    most about (DEADLINE_FACTOR + 1) * ldap_timeout_s. close() ends the kept connections.
    """

    def __init__(self, settings: Settings, *, service_pool_size: int = SERVICE_POOL_SIZE
                 ) -> None:
        self._endpoints = _parse_endpoints(settings.ldap_url)
        if not settings.ldap_bind_dn or not settings.ldap_bind_password:
            raise DirectoryUnavailable(
                "ldap_bind_dn and ldap_bind_password must name the broker's service account")
        if not _ATTRIBUTE_NAME.match(settings.ldap_user_attr):
            raise DirectoryUnavailable(
                f"ldap_user_attr {settings.ldap_user_attr!r} is not an attribute name")
        for name, dn in (("user base", settings.user_base), ("group base", settings.group_base),
                         ("ldap_bind_dn", settings.ldap_bind_dn)):
            try:
                normalize_dn(dn)
            except ValueError as e:
                raise DirectoryUnavailable(f"{name}: {e}") from e
        if settings.ldap_timeout_s <= 0:
            raise DirectoryUnavailable("ldap_timeout_s must be positive")
        if settings.ldap_ca_file and not os.path.isfile(settings.ldap_ca_file):
            raise DirectoryUnavailable(f"ldap_ca_file {settings.ldap_ca_file!r} does not exist")
        self._bind_dn = settings.ldap_bind_dn
        self._bind_password = settings.ldap_bind_password
        self._user_attr = settings.ldap_user_attr
        self._user_base = settings.user_base
        self._group_base = settings.group_base
        self._timeout_s = settings.ldap_timeout_s
        self._ca_file = settings.ldap_ca_file or None
        # bound service-account connections not in use: (connection, idle since)
        self._idle: list[tuple[Any, float]] = []
        self._idle_lock = threading.Lock()
        self._pool_size = service_pool_size

    def __repr__(self) -> str:  # no password here
        urls = " ".join(map(str, self._endpoints))
        return f"LdapDirectory({urls}, bind_dn={self._bind_dn!r})"

    def authenticate(self, username: str, password: str) -> DirectoryUser:
        """See Directory.authenticate. BLOCKS for up to ~3 * ldap_timeout_s."""
        check_credentials_shape(username, password)
        deadline = _Deadline(self._timeout_s)
        try:
            name, dn, display = self._as_service(
                deadline, lambda service: self._find_user(service, username, deadline))
            self._check_password(dn, password, deadline)
            groups = self._as_service(deadline, lambda service: resolve_nested_groups(
                self._groups_with_members(service, [dn], deadline),
                lambda dns: self._groups_with_members(service, dns, deadline)))
        except InvalidCredentials as e:
            log.info("login refused for %r: %s", username, e.reason)
            raise
        except DirectoryUnavailable as e:
            log.warning("directory unavailable (%r): %s", self, e)
            raise
        return DirectoryUser(name, dn, display, groups)

    def close(self) -> None:
        """Unbind the kept service connections. Idempotent; later calls open new ones."""
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for conn, _since in idle:
            _close(conn)

    @property
    def kept_connections(self) -> int:
        """Service connections kept bound for the next calls (for tests and metrics)."""
        with self._idle_lock:
            return len(self._idle)

    def _as_service(self, deadline: _Deadline, step: Callable[[Any], T]) -> T:
        """`step(connection)` on a bound service connection, kept or new. A kept one whose
        connection fails (the server dropped it while idle) is replaced once; a
        connection that failed is closed, one that answered goes back to the pool."""
        conn, kept = self._take_service(deadline)
        try:
            try:
                result = step(conn)
            except _ConnectionFailed as e:
                if not kept:
                    raise
                log.info("a kept service connection failed (%s); using a new one", e)
                _close(conn)
                conn = None
                conn = self._connect_service(deadline)
                result = step(conn)
        except InvalidCredentials:
            self._give_back(conn)  # the directory answered: the connection is sound
            raise
        except BaseException:
            if conn is not None:
                _close(conn)
            raise
        self._give_back(conn)
        return result

    def _take_service(self, deadline: _Deadline) -> tuple[Any, bool]:
        """(bound service connection, whether it was kept from an earlier call)."""
        stale = []
        conn = None
        now = time.monotonic()
        with self._idle_lock:
            while self._idle:
                candidate, since = self._idle.pop()
                if now - since <= SERVICE_IDLE_S:
                    conn = candidate
                    break
                stale.append(candidate)
        for old in stale:
            _close(old)
        if conn is not None:
            return conn, True
        return self._connect_service(deadline), False

    def _give_back(self, conn: Any) -> None:
        if conn is None:
            return
        if not getattr(conn, "closed", False) and getattr(conn, "bound", True):
            with self._idle_lock:
                if len(self._idle) < self._pool_size:
                    self._idle.append((conn, time.monotonic()))
                    return
        _close(conn)

    def _connect_service(self, deadline: _Deadline) -> Any:
        with _translated("service account bind"):
            try:
                return self._connect(self._bind_dn, self._bind_password, deadline, "service")
            except _BAD_CREDENTIALS:
                raise DirectoryUnavailable(
                    "the directory refused the service account: check ldap_bind_dn "
                    "and ldap_bind_password") from None

    def _connect(self, dn: str, password: str, deadline: _Deadline, who: str) -> Any:
        """A new connection bound as `dn`: one pass over the URLs, no retry loop.

        Raises ldap3's bind errors unchanged (the caller decides what a refusal
        means) and DirectoryUnavailable when no server could be reached.
        """
        failures = []
        for endpoint in self._endpoints:
            timeout = deadline.step(f"connecting to {endpoint}")
            conn = ldap3.Connection(
                self._server(endpoint, timeout), user=dn, password=password,
                authentication=ldap3.SIMPLE, client_strategy=ldap3.SYNC,
                auto_bind=ldap3.AUTO_BIND_NONE, read_only=True, raise_exceptions=True,
                auto_referrals=False, auto_escape=False,
                # an int: ldap3 packs it into SO_RCVTIMEO and fails on floats
                receive_timeout=max(1, math.ceil(timeout)))
            try:
                with _translated(f"{who} connection to {endpoint}"):
                    conn.open(read_server_info=False)
            except DirectoryUnavailable as e:
                failures.append(str(e))
                continue
            try:
                deadline.step(f"{who} bind")
                conn.bind(read_server_info=False)
            except BaseException:
                _close(conn)
                raise
            return conn
        raise DirectoryUnavailable("; ".join(failures))

    def _server(self, endpoint: _Endpoint, connect_timeout: float) -> Any:
        tls = None
        if endpoint.use_ssl:
            sni = None if _is_ip(endpoint.host) else endpoint.host
            with _translated("TLS settings"):
                tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=self._ca_file, sni=sni)
        return ldap3.Server(endpoint.host, port=endpoint.port, use_ssl=endpoint.use_ssl,
                            tls=tls, get_info=ldap3.NONE, connect_timeout=connect_timeout)

    def _find_user(self, conn: Any, username: str, deadline: _Deadline) -> tuple[str, str, str]:
        """(username as stored, DN, display name) of the one entry matching `username`."""
        attr = self._user_attr
        search_filter = f"(&(objectClass=inetOrgPerson)({attr}={escape_filter_chars(username)}))"
        with _translated("user search"):
            conn.search(self._user_base, search_filter, search_scope=ldap3.SUBTREE,
                        dereference_aliases=ldap3.DEREF_NEVER,
                        attributes=[attr, "displayName", "cn"], size_limit=2,
                        time_limit=math.ceil(deadline.step("user search")))
        entries = [r for r in conn.response or () if r.get("type") == "searchResEntry"]
        result = conn.result.get("result")
        if result == RESULT_SIZE_LIMIT_EXCEEDED or len(entries) > 1:
            log.warning("%s=%r matches several directory entries; refusing to guess", attr,
                        username)
            raise InvalidCredentials("ambiguous username")
        if result != RESULT_SUCCESS:
            raise DirectoryUnavailable(f"user search: directory answered {conn.result}")
        if not entries:
            raise InvalidCredentials("unknown user")
        entry = entries[0]
        name = next((v for v in _values(entry, attr) if _fold(v) == _fold(username)), username)
        display = next(iter(_values(entry, "displayName") + _values(entry, "cn")), name)
        return name, str(entry["dn"]), display

    def _check_password(self, dn: str, password: str, deadline: _Deadline) -> None:
        """Bind as the user on a connection of its own; raises InvalidCredentials."""
        with _translated("user bind"):
            try:
                conn = self._connect(dn, password, deadline, "user")
            except _BAD_CREDENTIALS:
                raise InvalidCredentials("wrong password") from None
        _close(conn)

    def _groups_with_members(self, conn: Any, member_dns: list[str],
                             deadline: _Deadline) -> list[str]:
        """DNs of the groupOfNames entries under the group base listing any of member_dns."""
        found: list[str] = []
        for i in range(0, len(member_dns), _MEMBERS_PER_QUERY):
            chunk = member_dns[i:i + _MEMBERS_PER_QUERY]
            members = "".join(f"(member={escape_filter_chars(dn)})" for dn in chunk)
            search_filter = f"(&(objectClass=groupOfNames)(|{members}))"
            with _translated("group search"):
                conn.search(self._group_base, search_filter, search_scope=ldap3.SUBTREE,
                            dereference_aliases=ldap3.DEREF_NEVER,
                            attributes=ldap3.NO_ATTRIBUTES,
                            time_limit=math.ceil(deadline.step("group search")))
            if conn.result.get("result") != RESULT_SUCCESS:
                # a truncated group list could silently drop a role: refuse instead
                raise DirectoryUnavailable(f"group search: directory answered {conn.result}")
            found.extend(str(r["dn"]) for r in conn.response or ()
                         if r.get("type") == "searchResEntry")
        return found


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


__all__ = [
    "Directory",
    "DirectoryError",
    "DirectoryUnavailable",
    "DirectoryUser",
    "FakeDirectory",
    "InvalidCredentials",
    "LdapDirectory",
    "check_credentials_shape",
    "normalize_dn",
    "resolve_nested_groups",
]
