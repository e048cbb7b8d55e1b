"""Server-side web sessions on a real SQLite database, with a clock the test moves."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from broker.sessions import SessionStore, hash_secret
from tests.conftest import ManualClock
from vdi.audit import AuditLog
from vdi.domain import Principal, Role
from vdi.models import AuditRow, SessionRow

IDLE_S = 600
ABSOLUTE_S = 3600
ALICE = Principal(username="alice", display_name="Alice Example",
                  roles=frozenset({Role.STAFF, Role.HELPDESK}),
                  groups=frozenset({"cn=window-staff,ou=groups,dc=district,dc=example",
                                    "cn=helpdesk,ou=groups,dc=district,dc=example"}))


@pytest.fixture
def store(db: sessionmaker[Session], clock: ManualClock) -> SessionStore:
    return SessionStore(db, idle_s=IDLE_S, absolute_s=ABSOLUTE_S, clock=clock)


def database_bytes(db_url: str) -> bytes:
    path = Path(db_url.removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


def test_create_then_get(store: SessionStore, clock: ManualClock) -> None:
    raw, created = store.create(ALICE, source="10.0.0.7")
    assert created.id_hash == hash_secret(raw)
    assert created.principal == ALICE
    assert created.created_at == clock()
    assert len(created.csrf) >= 32
    got = store.get(raw)
    assert got == created
    assert store.is_live(created.id_hash)
    assert store.live_for_user("alice") == [created.id_hash]


@pytest.mark.parametrize("raw", [None, "", "unknown-cookie-value", "x" * 129])
def test_get_without_a_live_cookie_is_none(store: SessionStore, raw: str | None) -> None:
    store.create(ALICE, source="10.0.0.7")
    assert store.get(raw) is None


def test_idle_sessions_expire(store: SessionStore, clock: ManualClock) -> None:
    raw, session = store.create(ALICE, source="10.0.0.7")
    clock.advance(IDLE_S)
    assert store.is_live(session.id_hash)
    clock.advance(1)
    assert not store.is_live(session.id_hash)
    assert store.get(raw) is None
    assert store.live_for_user("alice") == []  # get() ended it for good


def test_use_keeps_a_session_alive(store: SessionStore, clock: ManualClock) -> None:
    raw, _ = store.create(ALICE, source="10.0.0.7")
    for _ in range(5):  # 5 x 500 s: far past the idle limit since login
        clock.advance(500)
        assert store.get(raw) is not None


def test_last_seen_is_written_at_most_once_a_minute(db: sessionmaker[Session],
                                                    store: SessionStore,
                                                    clock: ManualClock) -> None:
    raw, session = store.create(ALICE, source="10.0.0.7")
    clock.advance(30)
    assert store.get(raw) is not None
    with db() as s:
        row = s.get(SessionRow, session.id_hash)
        assert row is not None and row.last_seen_at == session.created_at
    clock.advance(31)
    assert store.get(raw) is not None
    with db() as s:
        row = s.get(SessionRow, session.id_hash)
        assert row is not None and row.last_seen_at == clock()


def test_absolute_expiry_even_when_in_use(store: SessionStore, clock: ManualClock) -> None:
    raw, session = store.create(ALICE, source="10.0.0.7")
    for _ in range(ABSOLUTE_S // 400):  # used every 400 s up to the absolute limit
        clock.advance(400)
        assert store.get(raw) is not None
    assert clock() - session.created_at == timedelta(seconds=ABSOLUTE_S)
    clock.advance(1)  # seen a second ago, but logged in too long ago
    assert store.get(raw) is None
    assert not store.is_live(session.id_hash)


def test_end_is_idempotent(store: SessionStore) -> None:
    raw, session = store.create(ALICE, source="10.0.0.7")
    store.end(session.id_hash)
    store.end(session.id_hash)
    store.end(hash_secret("never-existed"))
    assert store.get(raw) is None
    assert not store.is_live(session.id_hash)
    assert store.live_for_user("alice") == []


def test_ending_keeps_the_first_end_time(db: sessionmaker[Session], store: SessionStore,
                                         clock: ManualClock) -> None:
    _, session = store.create(ALICE, source="10.0.0.7")
    store.end(session.id_hash)
    ended = clock()
    clock.advance(100)
    store.end(session.id_hash)
    with db() as s:
        row = s.get(SessionRow, session.id_hash)
        assert row is not None and row.ended_at == ended


def test_every_login_gets_a_fresh_id(store: SessionStore) -> None:
    raw1, s1 = store.create(ALICE, source="10.0.0.7")
    raw2, s2 = store.create(ALICE, source="10.0.0.7")
    assert raw1 != raw2
    assert s1.id_hash != s2.id_hash
    assert s1.csrf != s2.csrf
    assert sorted(store.live_for_user("alice")) == sorted([s1.id_hash, s2.id_hash])
    store.end(s1.id_hash)
    assert store.get(raw1) is None
    assert store.get(raw2) == s2


def test_only_the_hash_is_stored(db: sessionmaker[Session], db_url: str,
                                 store: SessionStore) -> None:
    raw, session = store.create(ALICE, source="10.0.0.7")
    with db() as s:
        assert list(s.scalars(select(SessionRow.id_hash))) == [hash_secret(raw)]
    stored = database_bytes(db_url)
    assert session.id_hash.encode() in stored  # the scan does see what was written
    assert raw.encode() not in stored


def test_an_audit_entry_given_to_create_is_written_with_the_session(
        db: sessionmaker[Session], store: SessionStore, clock: ManualClock) -> None:
    entry = AuditLog(db, clock=clock).row(actor="alice", role="staff", action="login",
                                          target="-", source="10.0.0.7", outcome="ok")
    _, session = store.create(ALICE, source="10.0.0.7", audit=entry)
    with db() as s:
        rows = s.scalars(select(AuditRow)).all()
        assert s.get(SessionRow, session.id_hash) is not None
    assert [(r.actor, r.action, r.outcome, r.at) for r in rows] == [
        ("alice", "login", "ok", clock())]


def test_reading_a_session_does_not_wait_for_a_writer(db: sessionmaker[Session],
                                                      store: SessionStore,
                                                      clock: ManualClock) -> None:
    """Every request reads its session: that read takes no write lock (only the refresh
    once a minute does), so requests do not queue behind one another's writes."""
    raw, session = store.create(ALICE, source="10.0.0.7")
    clock.advance(30)  # no refresh due
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with db.begin() as s:
            s.execute(update(SessionRow).where(SessionRow.id_hash == "nobody")
                      .values(source="x"))
            holding.set()
            release.wait(30)

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        assert store.get(raw) == session
        assert time.monotonic() - started < 1.0
    finally:
        release.set()
        t.join(30)


def test_the_limits_follow_the_access_policy(db: sessionmaker[Session],
                                             clock: ManualClock) -> None:
    limits = [IDLE_S, ABSOLUTE_S]  # as the security administrator's policy says now
    store = SessionStore(db, idle_s=IDLE_S, absolute_s=ABSOLUTE_S, clock=clock,
                         limits=lambda: (limits[0], limits[1]))
    raw, session = store.create(ALICE, source="10.0.0.7")
    clock.advance(300)
    assert store.is_live(session.id_hash)
    limits[0] = 120  # shortened: a session idle for 300 s is over at once
    assert not store.is_live(session.id_hash)
    assert store.get(raw) is None
    raw, session = store.create(ALICE, source="10.0.0.7")
    limits[:] = [600, 900]
    for _ in range(3):
        clock.advance(290)
        assert store.get(raw) is not None
    clock.advance(100)  # in use all along, but past the new absolute limit
    assert store.get(raw) is None
