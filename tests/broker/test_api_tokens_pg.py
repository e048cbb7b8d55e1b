"""Personal API tokens on a real PostgreSQL server: the schema (migration 0016) and the
store's statements as PostgreSQL runs them, and a token revoked by many at once (its
owner and the security administrator racing) is revoked once, with one audit record."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from broker.api_token_store import ApiTokenStore
from harness.pg_server import PgServer
from vdi.audit import AuditLog
from vdi.db import make_engine, session_factory
from vdi.domain import Principal, Role
from vdi.models import AuditRow

pytestmark = pytest.mark.real
OWNER = Principal("wangwu", "王五", frozenset({Role.HELPDESK}), frozenset({"cn=helpdesk"}))


@pytest.fixture
def db(pg: PgServer) -> Iterator[sessionmaker[Session]]:
    engine: Engine = make_engine(pg.url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE api_tokens RESTART IDENTITY"))
    yield session_factory(engine)
    engine.dispose()


def test_a_token_revoked_by_many_at_once_is_revoked_once(db: sessionmaker[Session]) -> None:
    store, audit = ApiTokenStore(db), AuditLog(db)
    secret, token = store.create(OWNER, "script", 30)
    assert store.find(secret) == token and store.live_count("wangwu") == 1
    start = Barrier(8)

    def revoke(i: int) -> bool:
        start.wait()
        return store.revoke(token.id, f"revoker{i}", audit=lambda t: audit.row(
            actor=f"revoker{i}", role="-", action="api-token-revoke",
            target=f"token {t.fingerprint}", source="s", outcome="ok")) is not None

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(revoke, range(8)))
    assert won.count(True) == 1
    with db() as s:
        records = s.scalars(select(AuditRow).where(
            AuditRow.target == f"token {token.fingerprint}")).all()
    assert len(records) == 1
    gone = store.find(secret)
    assert gone is not None and gone.state(gone.created_at) == "revoked"
    assert store.live_count("wangwu") == 0 and store.of_user("wangwu") == []
