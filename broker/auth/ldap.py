"""LdapDirectory: the staff directory on an LDAP server. The only module of the product
that imports ldap3; its errors are translated into broker.auth.directory's here.

ldap3's defaults are unsafe for a broker; what this adapter does instead:
blank input is refused before any traffic (an empty password is an "unauthenticated
bind" that servers report as success, RFC 4513 5.1.2); filter values are escaped and a
search must match exactly one entry; the user's bind runs on a fresh connection of its
own, closed right after, never on the service account's (and a connection that ever
carried a user's bind is never used again); referrals are not followed; certificates are
verified; plaintext ldap:// is allowed to loopback only; every socket has a timeout and
each call has an overall deadline; each URL is tried once, with no retry loop.

The identity is the directory's: the server matches a typed name loosely (case, Unicode
compatibility forms, spaces), and the user comes back under the entry's one stored value
of the user attribute, never under the typed spelling.

The service account's connections are kept bound between calls (a small pool, one
connection per thread at a time): a login then costs one TCP connection and bind (the
user's), not two. A kept connection that the server dropped while idle is replaced once
within the same call, inside its deadline.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import ldap3
from ldap3.core import exceptions as ldap_errors
from ldap3.core.results import RESULT_SIZE_LIMIT_EXCEEDED, RESULT_SUCCESS
from ldap3.utils.conv import escape_filter_chars

from broker.auth.directory import (
    SEARCH_LIMIT,
    DirectoryError,
    DirectoryUnavailable,
    DirectoryUser,
    InvalidCredentials,
    check_credentials_shape,
    normalize_dn,
    resolve_nested_groups,
    search_text,
)
from vdi.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# One authenticate() call gets this many ldap_timeout_s in total, on top of each
# operation's own timeout (a call makes 4 round trips or more).
DEADLINE_FACTOR = 2.0
# Member DNs per group search when resolving nesting (keeps filters short).
_MEMBERS_PER_QUERY = 50
# Bound service-account connections kept between calls, and for how long one may sit idle
# (firewalls and servers drop idle connections; an old one is closed rather than tried).
SERVICE_POOL_SIZE = 16
SERVICE_IDLE_S = 60.0
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*\Z")
_LOOPBACK_NAMES = frozenset({"localhost"})
# Bind results that mean "these credentials are not valid" rather than "server trouble".
_BAD_CREDENTIALS = (
    ldap_errors.LDAPInvalidCredentialsResult,
    ldap_errors.LDAPInappropriateAuthenticationResult,
)


class _ConnectionFailed(DirectoryUnavailable):
    """The connection itself failed (socket error, timeout, hang-up), not the server's
    answer: a kept connection failing this way is replaced and the step tried again."""


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

    def lookup(self, username: str) -> DirectoryUser | None:
        """See Directory.lookup. BLOCKS for up to ~2 * ldap_timeout_s."""
        deadline = _Deadline(self._timeout_s)
        try:
            name, dn, display = self._as_service(
                deadline, lambda service: self._find_user(service, username, deadline))
            groups = self._as_service(deadline, lambda service: resolve_nested_groups(
                self._groups_with_members(service, [dn], deadline),
                lambda dns: self._groups_with_members(service, dns, deadline)))
        except InvalidCredentials as e:  # gone, or no longer one clear entry
            log.info("re-check of %r: %s", username, e.reason)
            return None
        except DirectoryUnavailable as e:
            log.warning("directory unavailable (%r): %s", self, e)
            raise
        return DirectoryUser(name, dn, display, groups)

    def search(self, text: str, limit: int = SEARCH_LIMIT) -> list[DirectoryUser]:
        """See Directory.search. BLOCKS for up to ~2 * ldap_timeout_s."""
        wanted = search_text(text)
        if wanted is None:
            return []
        deadline = _Deadline(self._timeout_s)
        attr, esc = self._user_attr, escape_filter_chars(wanted)
        search_filter = (f"(&(objectClass=inetOrgPerson)(|({attr}={esc}*)(cn=*{esc}*)"
                         f"(displayName=*{esc}*)))")

        def step(conn: Any) -> list[DirectoryUser]:
            with _translated("people search"):
                conn.search(self._user_base, search_filter, search_scope=ldap3.SUBTREE,
                            dereference_aliases=ldap3.DEREF_NEVER,
                            attributes=[attr, "displayName", "cn"], size_limit=limit * 2,
                            time_limit=math.ceil(deadline.step("people search")))
            if conn.result.get("result") not in (RESULT_SUCCESS, RESULT_SIZE_LIMIT_EXCEEDED):
                raise DirectoryUnavailable(f"people search: directory answered {conn.result}")
            people = []
            for entry in conn.response or ():
                names = _values(entry, attr) if entry.get("type") == "searchResEntry" else []
                if len(names) == 1:  # an entry that is no one clear account is left out
                    display = next(iter(_values(entry, "displayName") + _values(entry, "cn")),
                                   names[0])
                    people.append((names[0], str(entry["dn"]), display))
            return [DirectoryUser(n, dn, d, resolve_nested_groups(
                self._groups_with_members(conn, [dn], deadline),
                lambda dns: self._groups_with_members(conn, dns, deadline)))
                for n, dn, d in sorted(people)[:limit]]

        try:
            return self._as_service(deadline, step)
        except DirectoryUnavailable as e:
            log.warning("directory unavailable (%r): %s", self, e)
            raise

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
        """(the entry's one stored value of the user attribute, DN, display name) of the
        one entry the directory matches with `username`, however it was spelled."""
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
        stored = _values(entry, attr)
        if len(stored) != 1:
            # several values would give one account several identities (one per value
            # typed); none readable would leave only the typed spelling: refuse both
            log.warning("%s of %s has %d values; the identity needs exactly one", attr,
                        entry["dn"], len(stored))
            raise InvalidCredentials(f"entry has {len(stored)} values of {attr}")
        name = stored[0]
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

