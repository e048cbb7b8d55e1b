"""The login throttle, shared by every broker process through the database.

An attempt is counted when it is reserved, BEFORE the directory is asked, so attempts
sent at once cannot all reach the directory: at most `limit` per account name and
`address_limit` per client address within `window_s`, however many broker processes
the attempts are spread over.

    attempt = throttle.reserve(typed_name, address)   # raises Throttled
    try:
        user = directory.authenticate(typed_name, password)
    except InvalidCredentials:
        attempt.failed()          # stays counted
    except DirectoryUnavailable:
        attempt.cancel()          # the password was not checked: not counted
    else:
        attempt.succeeded(user.username)

The account key is the typed name folded the way the directory matches names
(broker.auth.directory.fold_username: NFKC, case, spaces), so every spelling the
directory accepts for one account shares one count, and a name nobody has is counted
too. What a success clears, and why:
- the account's attempts reserved up to this one, under the typed key and the stored
  name's key (a clerk who mistyped four times is not locked out by the next typo);
  attempts reserved after it (maybe an attacker's, still in flight) stay counted;
- its own address reservation, and nothing else of the address: an office behind one
  NAT address is not throttled by its clerks' successful sign-ins, only by failures.

Race-freedom: each reservation is one write transaction that first locks its keys. On
PostgreSQL that is a transaction-level advisory lock per key (pg_advisory_xact_lock,
two-key form in a class of its own, taken in a fixed order so two transactions cannot
deadlock); on SQLite the database's write lock (BEGIN IMMEDIATE, vdi.db) serialises all
writers of every process. The count then sees every reservation committed before it.

The table stays bounded: every PRUNE_EVERY-th reservation of a process deletes up to
PRUNE_BATCH rows that have left the window (any key; rows another transaction is
deleting are skipped, not waited for).
Every method BLOCKS on the database: call it from a database thread.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, delete, insert, or_, select, text
from sqlalchemy.orm import Session, sessionmaker

from broker.auth.directory import fold_username
from vdi.domain import utc_now
from vdi.models import LoginAttemptRow

# Every PRUNE_EVERY-th reservation of a process deletes up to PRUNE_BATCH rows older than
# the window: more than the 2 * PRUNE_EVERY rows it adds meanwhile.
PRUNE_EVERY = 8
PRUNE_BATCH = 100
# Keys are cut to fit the column; names this long are refused by the directory anyway.
_KEY_LENGTH = 200
# pg_advisory_xact_lock(class, key): the two-int form does not overlap the one-bigint
# form, and this class keeps throttle locks apart from any other two-int lock.
_LOCK_CLASS = int.from_bytes(b"thrt", "big")


class Throttled(Exception):
    """Too many recent attempts for this account name or address; nothing was counted.
    `retry_after_s`: seconds until one more attempt would be let through."""

    def __init__(self, what: str, retry_after_s: int) -> None:
        super().__init__(f"too many sign-in attempts for this {what}")
        self.what = what
        self.retry_after_s = retry_after_s


def account_key(username: str) -> str:
    """The throttle key of a user name, typed or stored (see the module doc)."""
    return ("u:" + fold_username(username))[:_KEY_LENGTH]


def address_key(address: str) -> str:
    return ("a:" + address)[:_KEY_LENGTH]


@dataclass(frozen=True)
class Attempt:
    """One reserved attempt: counted from reserve() on. Call one of failed, succeeded,
    cancel once the directory has answered (or not); an attempt left without (the
    request was cut off) stays counted, as a failure does."""

    account_key: str
    account_row: int
    address_row: int
    throttle: LoginThrottle = field(repr=False, compare=False)

    def failed(self) -> None:
        """The password was wrong (or the name unknown): the attempt stays counted for the
        account and the address until it leaves the window. Writes nothing: the
        reservation already is the record."""

    def succeeded(self, canonical_username: str) -> None:
        """The directory accepted the password for `canonical_username` (its stored name):
        clear the account's attempts up to this one, under the typed and the stored
        name, and this attempt's address reservation. BLOCKS on the database."""
        keys = {self.account_key, account_key(canonical_username)}
        self.throttle._forget(keys, or_(
            and_(LoginAttemptRow.key.in_(keys), LoginAttemptRow.id <= self.account_row),
            LoginAttemptRow.id == self.address_row))

    def cancel(self) -> None:
        """The password was not checked (the directory gave no answer): the attempt stops
        counting for the account and the address. BLOCKS on the database."""
        self.throttle._forget({self.account_key}, LoginAttemptRow.id.in_(
            (self.account_row, self.address_row)))


class LoginThrottle:
    """At most `limit` attempts per account name and `address_limit` per client address
    within `window_s` seconds, across every broker sharing the database. `clock` gives
    aware UTC datetimes (the brokers' clocks are assumed to agree within seconds)."""

    def __init__(self, sessions: sessionmaker[Session], *, limit: int = 5,
                 address_limit: int = 30, window_s: float = 300.0,
                 clock: Callable[[], datetime] = utc_now) -> None:
        if limit < 1 or address_limit < 1 or window_s <= 0:
            raise ValueError("throttle limits and window must be positive")
        self._sessions = sessions
        self._limits = {"account": limit, "address": address_limit}
        self._window = timedelta(seconds=window_s)
        self._clock = clock
        self._reservations = itertools.count()

    def reserve(self, username: str, address: str) -> Attempt:
        """Count one attempt for the typed `username` and the client `address`, before
        the directory is asked. Raises Throttled (and counts nothing) when the account
        name already has `limit` attempts in the window or the address `address_limit`.
        BLOCKS on the database; race-free across threads and processes."""
        now = self._clock()
        keys = {"account": account_key(username), "address": address_key(address)}
        with self._sessions.begin() as s:
            _lock(s, keys.values())
            if next(self._reservations) % PRUNE_EVERY == 0:
                s.execute(delete(LoginAttemptRow).where(LoginAttemptRow.id.in_(
                    select(LoginAttemptRow.id).where(LoginAttemptRow.at <= now - self._window)
                    .order_by(LoginAttemptRow.id).limit(PRUNE_BATCH)
                    .with_for_update(skip_locked=True)))
                    .execution_options(synchronize_session=False))
            # few rows: a refused attempt adds none, so a key holds about its limit at most
            recent: dict[str, list[datetime]] = {key: [] for key in keys.values()}
            for key, at in s.execute(select(LoginAttemptRow.key, LoginAttemptRow.at).where(
                    LoginAttemptRow.key.in_(list(keys.values())),
                    LoginAttemptRow.at > now - self._window)):
                recent[key].append(at)
            for what, key in keys.items():
                times = sorted(recent[key], reverse=True)
                limit = self._limits[what]
                if len(times) >= limit:
                    # one more is let through when the limit-th newest leaves the window
                    free_at = times[limit - 1] + self._window
                    raise Throttled(what, max(1, math.ceil((free_at - now).total_seconds())))
            ids = s.scalars(insert(LoginAttemptRow).returning(
                LoginAttemptRow.id, sort_by_parameter_order=True),
                [{"key": keys["account"], "at": now}, {"key": keys["address"], "at": now}]).all()
            return Attempt(keys["account"], ids[0], ids[1], self)

    def _forget(self, keys: Iterable[str], which: ColumnElement[bool]) -> None:
        """Delete the attempts `which` selects, under the locks of `keys` (for Attempt)."""
        with self._sessions.begin() as s:
            _lock(s, keys)
            s.execute(delete(LoginAttemptRow).where(which)
                      .execution_options(synchronize_session=False))


def _lock(s: Session, keys: Iterable[str]) -> None:
    """Serialise the transactions that touch `keys` (see the module doc). On SQLite the
    write transaction already holds the database's one write lock."""
    if s.connection().dialect.name != "postgresql":
        return
    for lock_id in sorted({_lock_id(key) for key in keys}):
        s.execute(text("SELECT pg_advisory_xact_lock(:cls, :id)"),
                  {"cls": _LOCK_CLASS, "id": lock_id})


def _lock_id(key: str) -> int:
    """A stable 32-bit lock id for `key` (two keys sharing one only wait for each other)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big", signed=True)
