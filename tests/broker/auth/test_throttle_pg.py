"""The login throttle across two broker processes on a real PostgreSQL server.

Each broker is an OS process of its own (multiprocessing, spawn) with its own engine;
their threads are released together by one barrier, so the reservations really overlap
in concurrent transactions on the server. However the attempts are spread, exactly
`limit` (per account) or `address_limit` (per address) are granted in total.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

import pytest
from sqlalchemy import Engine, text

from broker.auth.throttle import LoginThrottle, Throttled
from harness.pg_server import PgServer
from vdi.db import make_engine, session_factory

WINDOW_S = 300.0


@pytest.fixture
def pg_engine(pg: PgServer) -> Iterator[Engine]:
    engine = make_engine(pg.url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE login_attempts RESTART IDENTITY"))
    yield engine
    engine.dispose()


def attempt_once(throttle: LoginThrottle, username: str, address: str) -> int:
    """1 if the attempt was granted (and then failed), 0 if throttled."""
    try:
        throttle.reserve(username, address).failed()
    except Throttled:
        return 0
    return 1


def same_account(throttle: LoginThrottle, broker: int, thread: int) -> int:
    """Spellings of one account, each attempt from an address of its own."""
    spelling = ("zhangsan", "ZhangSan", "ＺＨＡＮＧＳＡＮ", " zhangsan")[thread % 4]
    return attempt_once(throttle, spelling, f"10.{broker}.0.{thread}")


def same_address(throttle: LoginThrottle, broker: int, thread: int) -> int:
    """A name of its own per attempt, all from one address."""
    return attempt_once(throttle, f"clerk-{broker}-{thread}", "192.0.2.10")


def mixed_outcomes(throttle: LoginThrottle, broker: int, thread: int) -> int:
    """40 attempts on three accounts from two addresses, ending in every way."""
    granted = 0
    for i in range(40):
        username = ("zhangsan", "ZHANGSAN", "lisi", "wangwu")[(thread + i) % 4]
        try:
            attempt = throttle.reserve(username, f"10.9.0.{(broker + i) % 2}")
        except Throttled:
            continue
        granted += 1
        outcome = (thread + 3 * i) % 3
        if outcome == 0:
            attempt.failed()
        elif outcome == 1:
            attempt.succeeded(username.lower())
        else:
            attempt.cancel()
    return granted


Work = Callable[[LoginThrottle, int, int], int]


def broker_process(url: str, work: Work, broker: int, threads: int, barrier: Barrier,
                   results: Queue[int]) -> None:
    """One broker: its own engine and throttle; `threads` threads run work(throttle,
    broker, thread) at once. Puts the sum of their grants (-1 if one raised)."""
    engine = make_engine(url)
    throttle = LoginThrottle(session_factory(engine), limit=5, address_limit=30,
                             window_s=WINDOW_S)
    ready = threading.Barrier(threads)

    def one(thread: int) -> int:
        with engine.connect() as conn:  # a pooled connection ready before the start
            conn.execute(text("SELECT 1"))
        ready.wait()
        if thread == 0:
            barrier.wait(timeout=60)  # every broker's threads are ready: go
        ready.wait()
        return work(throttle, broker, thread)

    try:
        with ThreadPoolExecutor(threads) as pool:
            results.put(sum(pool.map(one, range(threads))))
    except Exception:
        results.put(-1)
        raise
    finally:
        engine.dispose()


def run_brokers(url: str, work: Work, threads: list[int]) -> list[int]:
    """One broker process per entry of `threads`, each firing that many attempts at once.
    Returns what each was granted."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(threads))
    results: Queue[int] = ctx.Queue()
    procs = [ctx.Process(target=broker_process,
                         args=(url, work, b, n, barrier, results))
             for b, n in enumerate(threads)]
    for p in procs:
        p.start()
    try:
        granted = [results.get(timeout=120) for _ in procs]
    except queue.Empty:
        granted = []
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0] * len(procs)
    return granted


def test_two_brokers_grant_one_account_exactly_limit_attempts(pg: PgServer,
                                                              pg_engine: Engine) -> None:
    granted = run_brokers(pg.url, same_account, [10, 10])  # 20 wrong passwords at once
    assert len(granted) == 2 and min(granted) >= 0, granted
    assert sum(granted) == 5, granted
    with pg_engine.connect() as conn:
        keys = conn.execute(text("SELECT key, count(*) FROM login_attempts "
                                 "WHERE key LIKE 'u:%' GROUP BY key")).all()
    assert [tuple(k) for k in keys] == [("u:zhangsan", 5)]


def test_two_brokers_grant_one_address_exactly_address_limit_attempts(
        pg: PgServer, pg_engine: Engine) -> None:
    granted = run_brokers(pg.url, same_address, [23, 22])  # 45 names from one address
    assert len(granted) == 2 and min(granted) >= 0, granted
    assert sum(granted) == 30, granted
    with pg_engine.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM login_attempts "
                                  "WHERE key = 'a:192.0.2.10'")).scalar_one()
    assert count == 30


def test_failures_successes_and_cancels_from_two_brokers_never_deadlock(
        pg: PgServer, pg_engine: Engine) -> None:
    # every path that locks keys or deletes rows, at once in 20 threads of two brokers:
    # a deadlock would abort a transaction, and that broker would report -1
    granted = run_brokers(pg.url, mixed_outcomes, [10, 10])
    assert len(granted) == 2 and min(granted) > 0, granted
