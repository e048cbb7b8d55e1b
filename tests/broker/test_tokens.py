"""One-time console tokens on a real SQLite database, with a clock the test moves."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.sessions import hash_secret
from broker.tokens import ConsoleGrant, TokenRejected, TokenStore
from tests.conftest import ManualClock
from vdi.audit import AuditLog
from vdi.models import AuditRow, ConsoleTokenRow

TTL_S = 60
SESSION_A = hash_secret("session-a-cookie")
SESSION_B = hash_secret("session-b-cookie")


@pytest.fixture
def tokens(db: sessionmaker[Session], clock: ManualClock) -> TokenStore:
    return TokenStore(db, ttl_s=TTL_S, clock=clock)


def issue(tokens: TokenStore, session_hash: str = SESSION_A, kind: str = "vnc",
          desktop_id: str = "window-0001") -> str:
    return tokens.issue(username="clerk1", session_hash=session_hash, desktop_id=desktop_id,
                        kind=kind)


def rejected(tokens: TokenStore, raw: str, session_hash: str | None = SESSION_A,
             kind: str | None = "vnc") -> str:
    """The reason consume gives for refusing the token (fails if it is accepted)."""
    with pytest.raises(TokenRejected) as err:
        tokens.consume(raw, session_hash=session_hash, kind=kind)
    return err.value.reason


def database_bytes(db_url: str) -> bytes:
    """Every byte SQLite keeps for the database: the file, its WAL and shared memory."""
    path = Path(db_url.removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


def test_a_token_opens_its_console_once(tokens: TokenStore) -> None:
    raw = issue(tokens)
    grant = tokens.consume(raw, session_hash=SESSION_A)
    assert grant == ConsoleGrant(username="clerk1", session_hash=SESSION_A,
                                 desktop_id="window-0001", kind="vnc", channel=1)
    assert rejected(tokens, raw) == "token already used"
    assert rejected(tokens, raw) == "token already used"


def test_tokens_are_random_and_url_safe(tokens: TokenStore) -> None:
    raws = {issue(tokens) for _ in range(20)}
    assert len(raws) == 20
    for raw in raws:
        assert len(raw) == 43
        assert set(raw) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_a_token_expires_after_its_ttl(tokens: TokenStore, clock: ManualClock) -> None:
    fresh, stale = issue(tokens), issue(tokens)
    assert tokens.ttl_s == TTL_S
    clock.advance(TTL_S - 1)
    assert tokens.consume(fresh, session_hash=SESSION_A).desktop_id == "window-0001"
    clock.advance(1)
    assert rejected(tokens, stale) == "token expired"


def test_expired_tokens_are_purged_when_new_ones_are_issued(
        db: sessionmaker[Session], tokens: TokenStore, clock: ManualClock) -> None:
    old = issue(tokens)
    clock.advance(TTL_S + 1)
    new = issue(tokens)
    with db() as s:
        stored = set(s.scalars(select(ConsoleTokenRow.token_hash)))
    assert stored == {hash_secret(new)}
    assert rejected(tokens, old) == "unknown token"


def test_expired_tokens_are_swept_at_most_every_ten_seconds(
        tokens: TokenStore, clock: ManualClock) -> None:
    issue(tokens)  # sweeps now; the next sweep is due in 10 s
    clock.advance(9)
    late = issue(tokens)  # expires at 69 s
    clock.advance(57)  # 66 s: a sweep, before `late` expired
    issue(tokens)
    clock.advance(4)  # 70 s: `late` has expired, but no sweep is due yet
    issue(tokens)
    assert rejected(tokens, late) == "token expired"  # still stored, still refused
    clock.advance(7)  # 77 s: the next sweep removes it
    issue(tokens)
    assert rejected(tokens, late) == "unknown token"


def test_an_audit_entry_given_to_issue_is_written_with_the_token(
        db: sessionmaker[Session], tokens: TokenStore, clock: ManualClock) -> None:
    entry = AuditLog(db, clock=clock).row(actor="clerk1", role="staff", action="connect",
                                          target="window-0001", source="10.0.0.7",
                                          outcome="ok")
    raw = tokens.issue(username="clerk1", session_hash=SESSION_A, desktop_id="window-0001",
                       audit=entry)
    with db() as s:
        rows = s.scalars(select(AuditRow)).all()
    assert [(r.actor, r.action, r.target, r.outcome, r.at) for r in rows] == [
        ("clerk1", "connect", "window-0001", "ok", clock())]
    assert tokens.consume(raw, session_hash=SESSION_A).desktop_id == "window-0001"


def test_a_token_is_bound_to_its_session(tokens: TokenStore) -> None:
    raw = issue(tokens)
    assert rejected(tokens, raw, session_hash=SESSION_B) == "token bound to another session"
    assert rejected(tokens, raw, session_hash=None) == "token bound to another session"
    # a refused attempt from elsewhere does not burn the owner's token
    assert tokens.consume(raw, session_hash=SESSION_A).session_hash == SESSION_A


def test_a_token_is_bound_to_its_console_kind(tokens: TokenStore) -> None:
    raw = issue(tokens, kind="vnc")
    assert rejected(tokens, raw, kind="spice") == "token for another console kind"
    spice = issue(tokens, kind="spice")
    assert tokens.consume(spice, session_hash=SESSION_A, kind="spice").kind == "spice"


VALID_SHAPE = "A" * 43


@pytest.mark.parametrize("raw", [
    "",
    "x",
    VALID_SHAPE[:-1],                    # one short
    VALID_SHAPE + "A",                   # one long
    VALID_SHAPE + "\n",                  # a trailing newline
    "\n" + VALID_SHAPE[:-1],
    VALID_SHAPE[:-1] + "=",              # base64 padding
    VALID_SHAPE[:-1] + "+",              # standard base64, not url-safe
    VALID_SHAPE[:-1] + "/",
    VALID_SHAPE[:-1] + ".",
    VALID_SHAPE[:-1] + " ",
    VALID_SHAPE[:-1] + "\x00",
    VALID_SHAPE[:-1] + "é",              # a non-ASCII letter
    VALID_SHAPE[:-1] + "\uff11",         # a full-width digit (str.isalnum would take it)
    "A" * 40 + "%2F",                    # percent-encoding
    "../../../../etc/passwd" + "A" * 21,
    "A" * 100_000,
])
def test_malformed_tokens_are_refused_before_any_lookup(tokens: TokenStore, raw: str) -> None:
    assert rejected(tokens, raw) == "malformed token"


def test_a_well_formed_unknown_token_is_refused(tokens: TokenStore) -> None:
    issue(tokens)
    assert rejected(tokens, secrets.token_urlsafe(32)) == "unknown token"


def test_only_the_hash_is_stored(db: sessionmaker[Session], db_url: str,
                                 tokens: TokenStore) -> None:
    raw = issue(tokens)
    with db() as s:
        row = s.scalars(select(ConsoleTokenRow)).one()
    assert row.token_hash == hash_secret(raw)
    stored = database_bytes(db_url)
    assert hash_secret(raw).encode() in stored  # the scan does see what was written
    assert raw.encode() not in stored


def test_revoke_session_kills_its_unused_tokens_only(tokens: TokenStore) -> None:
    a1, a2, b1 = issue(tokens), issue(tokens), issue(tokens, session_hash=SESSION_B)
    tokens.revoke_session(SESSION_A)
    assert rejected(tokens, a1) == "unknown token"
    assert rejected(tokens, a2) == "unknown token"
    assert tokens.consume(b1, session_hash=SESSION_B).session_hash == SESSION_B
    tokens.revoke_session(SESSION_A)  # idempotent


def test_a_grant_of_several_channels_opens_that_many_websockets(tokens: TokenStore) -> None:
    raw = tokens.issue(username="clerk1", session_hash=SESSION_A, desktop_id="window-0001",
                       kind="spice", channels=3)
    opened = [tokens.consume(raw, session_hash=SESSION_A, kind=None) for _ in range(3)]
    assert [g.channel for g in opened] == [1, 2, 3]
    assert {g.kind for g in opened} == {"spice"}
    assert rejected(tokens, raw, kind=None) == "token already used"
    with pytest.raises(ValueError, match="at least one channel"):
        tokens.issue(username="clerk1", session_hash=SESSION_A, desktop_id="window-0001",
                     channels=0)
