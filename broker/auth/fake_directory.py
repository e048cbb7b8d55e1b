"""An in-memory directory with LdapDirectory's contract, for fast tests and benchmarks."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from broker.auth.directory import (
    SEARCH_LIMIT,
    DirectoryUser,
    InvalidCredentials,
    check_credentials_shape,
    fold_username,
    normalize_dn,
    resolve_nested_groups,
    search_text,
)

_NO_GROUPS: Mapping[str, Iterable[str]] = MappingProxyType({})


class FakeDirectory:
    """users: stored username -> (password, display name, DNs of the groups it is a
    direct member of); groups: group DN -> DNs of the groups that group is itself a
    member of.

    A typed name matches the way slapd matches `uid` (fold_username: case, Unicode
    compatibility forms and surrounding spaces ignored), and the user comes back under
    the key as stored. Two keys that fold alike would be one account spelled twice:
    construction refuses them (ValueError), as a directory would refuse to guess.
    """

    def __init__(self, users: Mapping[str, tuple[str, str, Iterable[str]]],
                 groups: Mapping[str, Iterable[str]] = _NO_GROUPS, *,
                 user_base: str = "ou=people,dc=fake,dc=invalid") -> None:
        self._users: dict[str, tuple[str, str, str, tuple[str, ...]]] = {}
        for name, (password, display, direct) in users.items():
            key = fold_username(name)
            if key in self._users:
                raise ValueError(f"users {self._users[key][0]!r} and {name!r} are one name")
            self._users[key] = (name, password, display, tuple(direct))
        self._parents = {normalize_dn(g): tuple(parents) for g, parents in groups.items()}
        self._user_base = user_base

    def authenticate(self, username: str, password: str) -> DirectoryUser:
        """See broker.auth.directory.Directory.authenticate (does not block)."""
        check_credentials_shape(username, password)
        record = self._users.get(fold_username(username))
        if record is None:
            raise InvalidCredentials("unknown user")
        name, expected, display, direct = record
        if not hmac.compare_digest(expected.encode(), password.encode()):
            raise InvalidCredentials("wrong password")
        groups = resolve_nested_groups(direct, self._parents_of)
        return DirectoryUser(name, f"uid={name},{self._user_base}", display, groups)

    def lookup(self, username: str) -> DirectoryUser | None:
        """See broker.auth.directory.Directory.lookup (does not block)."""
        record = self._users.get(fold_username(username))
        if record is None:
            return None
        name, _, display, direct = record
        groups = resolve_nested_groups(direct, self._parents_of)
        return DirectoryUser(name, f"uid={name},{self._user_base}", display, groups)

    def search(self, text: str, limit: int = SEARCH_LIMIT) -> list[DirectoryUser]:
        """See broker.auth.directory.Directory.search (does not block)."""
        wanted = search_text(text)
        if wanted is None:
            return []
        key = fold_username(wanted)
        found = sorted(name for name, _, display, _ in self._users.values()
                       if fold_username(name).startswith(key)
                       or key in fold_username(display))
        return [u for u in (self.lookup(n) for n in found[:limit]) if u is not None]

    def remove_user(self, username: str) -> None:
        """The account leaves the directory (tests of sessions that follow it)."""
        self._users.pop(fold_username(username), None)

    def _parents_of(self, dns: list[str]) -> list[str]:
        return [p for dn in dns for p in self._parents.get(normalize_dn(dn), ())]
