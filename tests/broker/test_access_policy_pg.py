"""The access policy changed by several security administrators at the same moment on a
real PostgreSQL server: exactly one change of a version wins, the others are told the
policy changed meanwhile, and the trail holds the one change that was made."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from sqlalchemy import delete, text
from sqlalchemy.orm import Session, sessionmaker

from broker.access_policy import PolicyChanged, PolicyStore
from broker.blocking import Blocking
from harness.pg_server import PgServer
from vdi.audit import AuditLog
from vdi.db import make_engine, session_factory
from vdi.domain import Principal, Role
from vdi.models import AccessPolicyRow
from vdi.settings import RoleMap

pytestmark = pytest.mark.real

SECURITY = Principal(username="wujiu", display_name="吴九", roles=frozenset(
    {Role.SECURITY_ADMIN}), groups=frozenset({"cn=vdi-security,dc=x"}))


@pytest.fixture
def db(pg: PgServer) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(pg.url)
    made = session_factory(engine)
    with made.begin() as s:
        s.execute(delete(AccessPolicyRow))
    yield made
    engine.dispose()


def store(db: sessionmaker[Session]) -> PolicyStore:
    return PolicyStore(blocking=Blocking(), db=db, audit=AuditLog(db), role_map=RoleMap(),
                       session_idle_s=3600, session_absolute_s=7200)


@pytest.mark.parametrize("version", [0, 1])  # the first version (an insert), and a later one
def test_one_change_of_a_version_wins(db: sessionmaker[Session], version: int) -> None:
    if version:
        asyncio.run(store(db).change(SECURITY, {}, 0, "the first version", "127.0.0.1"))

    async def all_at_once() -> list[object]:
        stores = [store(db) for _ in range(8)]
        return await asyncio.gather(*(
            s.change(SECURITY, {"session_idle_s": 600 + i}, version, f"change number {i}",
                     "127.0.0.1") for i, s in enumerate(stores)), return_exceptions=True)

    with db() as s:
        before = s.execute(text("SELECT count(*) FROM audit WHERE action = 'policy-change'")
                           ).scalar_one()
    results = asyncio.run(all_at_once())
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1 and all(isinstance(e, PolicyChanged) for e in lost), results
    with db() as s:
        row = s.get(AccessPolicyRow, 1)
        assert row is not None and row.version == version + 1
        after = s.execute(text("SELECT count(*) FROM audit WHERE action = 'policy-change'")
                          ).scalar_one()
    assert after - before == 1
