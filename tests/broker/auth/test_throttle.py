"""The login throttle with a hand-moved clock (broker.auth.throttle), on SQLite and on
a real PostgreSQL server (where the advisory locks and SKIP LOCKED pruning really run).

The same throttle across two broker processes on PostgreSQL: test_throttle_pg.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from broker.auth.throttle import PRUNE_BATCH, PRUNE_EVERY, Attempt, LoginThrottle, Throttled
from harness.pg_server import PgServer
from tests.conftest import ManualClock
from vdi.db import make_engine, session_factory
from vdi.models import LoginAttemptRow

HERE, THERE = "10.0.0.7", "10.0.0.8"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.real)])
def store(request: pytest.FixtureRequest) -> Iterator[sessionmaker[Session]]:
    """The database the throttle keeps its attempts in, empty."""
    if request.param == "sqlite":
        yield request.getfixturevalue("db")
        return
    pg: PgServer = request.getfixturevalue("pg")
    engine = make_engine(pg.url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE login_attempts RESTART IDENTITY"))
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def throttle(store: sessionmaker[Session], clock: ManualClock) -> LoginThrottle:
    return LoginThrottle(store, limit=5, address_limit=30, window_s=300, clock=clock)


def rows(store: sessionmaker[Session]) -> list[str]:
    with store() as s:
        return sorted(s.scalars(select(LoginAttemptRow.key)).all())


def fail(throttle: LoginThrottle, username: str, address: str = HERE, times: int = 1) -> None:
    for _ in range(times):
        throttle.reserve(username, address).failed()


def test_the_sixth_attempt_in_the_window_is_refused_until_the_first_leaves_it(
        throttle: LoginThrottle, clock: ManualClock) -> None:
    for _ in range(5):
        fail(throttle, "zhangsan")
        clock.advance(10)  # attempts at 0, 10, 20, 30, 40 s; now 50 s
    with pytest.raises(Throttled) as caught:
        throttle.reserve("zhangsan", THERE)  # another address does not get around it
    assert (caught.value.what, caught.value.retry_after_s) == ("account", 250)
    clock.advance(249)
    with pytest.raises(Throttled):
        throttle.reserve("zhangsan", HERE)
    clock.advance(1)  # the first attempt is 300 s old: out of the window
    throttle.reserve("zhangsan", HERE)
    with pytest.raises(Throttled) as caught:
        throttle.reserve("zhangsan", HERE)
    assert caught.value.retry_after_s == 10  # the second leaves at 310 s


def test_spellings_of_one_name_share_one_count(throttle: LoginThrottle) -> None:
    for typed in ("zhangsan", "ZhangSan", " ZHANGSAN ", "ｚｈａｎｇｓａｎ", "zhang\u017fan"):
        fail(throttle, typed)
    for typed in ("zhangsan", "Ｚｈａｎｇｓａｎ", "zhangsan\u3000"):
        with pytest.raises(Throttled):
            throttle.reserve(typed, THERE)
    throttle.reserve("sunqi", HERE)  # another account from the same address is not locked


def test_a_refused_attempt_counts_for_nothing(store: sessionmaker[Session],
                                              throttle: LoginThrottle) -> None:
    fail(throttle, "zhangsan", times=5)
    for _ in range(40):
        with pytest.raises(Throttled):
            throttle.reserve("zhangsan", HERE)
    assert rows(store) == ["a:" + HERE] * 5 + ["u:zhangsan"] * 5
    fail(throttle, "sunqi", times=5)  # the address has 10 of its 30


def test_one_address_gets_address_limit_attempts_over_all_names(
        throttle: LoginThrottle, clock: ManualClock) -> None:
    for i in range(30):
        fail(throttle, f"clerk{i}")
    with pytest.raises(Throttled) as caught:
        throttle.reserve("clerk99", HERE)
    assert (caught.value.what, caught.value.retry_after_s) == ("address", 300)
    throttle.reserve("clerk99", THERE)
    clock.advance(300)
    throttle.reserve("clerk99", HERE)


def test_attempts_are_counted_when_reserved_not_when_they_fail(
        throttle: LoginThrottle) -> None:
    # five in flight at once, none answered yet: the sixth is refused before the directory
    in_flight = [throttle.reserve("zhangsan", HERE) for _ in range(5)]
    with pytest.raises(Throttled):
        throttle.reserve("zhangsan", HERE)
    for attempt in in_flight:
        attempt.failed()
    with pytest.raises(Throttled):
        throttle.reserve("zhangsan", HERE)


def test_a_success_clears_the_accounts_earlier_attempts_under_both_names(
        store: sessionmaker[Session], throttle: LoginThrottle) -> None:
    fail(throttle, "zhangsan", times=2)
    fail(throttle, "zs.alias", times=2)  # a name the directory also maps to zhangsan
    attempt = throttle.reserve("ZS.Alias", HERE)
    later = throttle.reserve("zs.alias", THERE)  # in flight while the first succeeds
    fail(throttle, "sunqi")
    attempt.succeeded("zhangsan")
    # gone: both names' attempts up to the success and its own address reservation;
    # kept: the later attempt, the address's failures, other accounts
    assert rows(store) == sorted(["a:" + HERE] * 5 + ["a:" + THERE, "u:zs.alias", "u:sunqi"])
    later.failed()
    fail(throttle, "zs.alias", times=4)
    with pytest.raises(Throttled):
        throttle.reserve("zs.alias", HERE)
    fail(throttle, "zhangsan", times=5)


def test_successes_from_one_address_never_throttle_it(throttle: LoginThrottle) -> None:
    # an office behind one NAT address: 100 clerks sign in within the window
    for i in range(100):
        throttle.reserve(f"clerk{i}", HERE).succeeded(f"clerk{i}")
    fail(throttle, "clerk100", times=5)


def test_cancel_takes_the_attempt_back(store: sessionmaker[Session],
                                       throttle: LoginThrottle) -> None:
    fail(throttle, "zhangsan", times=4)
    for _ in range(10):  # the directory is down: the password was never checked
        throttle.reserve("zhangsan", HERE).cancel()
    assert len(rows(store)) == 8
    fail(throttle, "zhangsan")
    with pytest.raises(Throttled):
        throttle.reserve("zhangsan", HERE)


def test_old_attempts_are_pruned(store: sessionmaker[Session], throttle: LoginThrottle,
                                 clock: ManualClock) -> None:
    # a spray of one attempt per name, one every 5 s, for an hour
    for i in range(720):
        fail(throttle, f"guess{i}", address=f"10.1.{i // 250}.{i % 250}")
        clock.advance(5)
    # 60 attempts (two rows each) are within the last 300 s; older ones are gone but
    # for those added since the last pruning round
    assert 120 <= len(rows(store)) <= 120 + 2 * PRUNE_EVERY
    clock.advance(300)
    for i in range(2 * PRUNE_EVERY):  # two rounds, each deleting up to PRUNE_BATCH rows
        fail(throttle, f"late{i}", address=f"10.3.0.{i}")
    assert len(rows(store)) == 2 * 2 * PRUNE_EVERY
    assert all(key.startswith(("u:late", "a:10.3.0.")) for key in rows(store))


def test_a_pruning_round_is_bounded(store: sessionmaker[Session], throttle: LoginThrottle,
                                    clock: ManualClock) -> None:
    with store.begin() as s:
        s.add_all(LoginAttemptRow(key=f"u:old{i}", at=clock()) for i in range(250))
    clock.advance(301)

    def old() -> int | None:
        with store() as s:
            return s.scalar(select(func.count()).where(LoginAttemptRow.key.like("u:old%")))

    throttle.reserve("zhangsan", HERE)  # the throttle's first reservation prunes
    assert old() == 250 - PRUNE_BATCH
    for i in range(1, PRUNE_EVERY):
        throttle.reserve(f"clerk{i}", HERE)
    assert old() == 250 - PRUNE_BATCH
    throttle.reserve("sunqi", HERE)
    assert old() == 250 - 2 * PRUNE_BATCH


def test_threads_racing_for_one_account_get_limit_reservations(
        throttle: LoginThrottle) -> None:
    barrier = threading.Barrier(20)

    def one(i: int) -> Attempt | Throttled:
        barrier.wait()
        try:
            return throttle.reserve("zhangsan", f"10.2.0.{i}")
        except Throttled as e:
            return e

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert sum(isinstance(r, Attempt) for r in results) == 5


@pytest.mark.parametrize("changes", [{"limit": 0}, {"address_limit": 0}, {"window_s": 0}])
def test_limits_must_be_positive(store: sessionmaker[Session], changes: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="positive"):
        LoginThrottle(store, **changes)  # type: ignore[arg-type]
