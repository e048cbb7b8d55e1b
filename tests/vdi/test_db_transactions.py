"""How vdi.db runs transactions on SQLite: reads take no lock, writes queue in-process.

Real threads on a real SQLite file (WAL). Each case would have blocked for the 30 s busy
timeout, or failed late with "database is locked", under the old BEGIN IMMEDIATE for
every transaction; here they must finish at once or fail at once with a clear message.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import InvalidRequestError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from vdi.db import make_engine, read_engine, session_factory
from vdi.models import AuditRow, HostRow

AT = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def entry(actor: str = "alice") -> AuditRow:
    return AuditRow(at=AT, actor=actor, role="admin", action="a", target="t", source="s",
                    outcome="ok", detail="")


def count(db: sessionmaker[Session]) -> int:
    with db() as s:
        return s.scalar(select(func.count()).select_from(AuditRow)) or 0


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    e = make_engine(db_url)
    yield e
    e.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


class HeldWrite:
    """A write transaction held open in another thread until release()."""

    def __init__(self, db: sessionmaker[Session]) -> None:
        self._db = db
        self._begun = threading.Event()
        self._release = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._begun.wait(10), "the writer never began"

    def _run(self) -> None:
        try:
            with self._db.begin() as s:
                s.add(entry("writer"))
                s.flush()
                self._begun.set()
                self._release.wait(30)
        except BaseException as e:  # reported by release()
            self.error = e
            self._begun.set()

    def release(self) -> None:
        self._release.set()
        self._thread.join(30)
        assert self.error is None, self.error


def timed(fn: Callable[[], object]) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def test_a_read_does_not_wait_for_a_writer(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        s.add(entry())
    writer = HeldWrite(sessions)
    try:
        # the committed row is seen, the writer's uncommitted one is not
        assert timed(lambda: count(sessions)) < 1.0
        assert count(sessions) == 1
    finally:
        writer.release()
    assert count(sessions) == 2


def test_a_write_in_a_read_session_fails_at_once_naming_the_rule(
        sessions: sessionmaker[Session]) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidRequestError, match=r"sessionmaker\.begin\(\)"), \
            sessions() as s:
        s.add(entry())
        s.commit()
    assert time.monotonic() - started < 1.0
    assert count(sessions) == 0
    # the same work in a write transaction is fine
    with sessions() as s, s.begin():
        s.add(entry())
    assert count(sessions) == 1


def test_writers_of_one_process_queue_and_all_commit(sessions: sessionmaker[Session]) -> None:
    """Read-modify-write from 16 threads at once: none fails, none is lost (a host
    record's memory as the counter: audit rows cannot be changed)."""
    with sessions.begin() as s:
        s.add(HostRow(uri="qemu:///counter", name="counter", graphics_listen="-",
                      storage_pool="-", storage_dir="-", log_dir="-", shared_storage=False,
                      maintenance=False, status="up", memory_mib=0, cpus=0, created_at=AT))

    def bump(_i: int) -> None:
        with sessions.begin() as s:
            row = s.scalars(select(HostRow).where(HostRow.name == "counter")).one()
            row.memory_mib += 1

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(bump, range(200)))
    with sessions() as s:
        assert s.scalars(select(HostRow.memory_mib)).one() == 200


def test_a_nested_write_in_one_thread_fails_at_once(sessions: sessionmaker[Session]) -> None:
    started = time.monotonic()
    with sessions.begin() as outer:
        outer.add(entry("outer"))
        outer.flush()
        with pytest.raises(OperationalError, match="nested write transaction"), \
                sessions.begin() as inner:
            inner.add(entry("inner"))
            inner.flush()
    assert time.monotonic() - started < 1.0
    with sessions() as s:
        assert s.scalars(select(AuditRow.actor)).all() == ["outer"]


def test_a_failed_write_gives_the_lock_back(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(RuntimeError), sessions.begin() as s:
        s.add(entry())
        s.flush()
        raise RuntimeError("the caller gives up half-way")
    # another thread can write at once (it would wait 30 s for a lock left held)
    with ThreadPoolExecutor(1) as pool:
        elapsed = pool.submit(timed, lambda: _write(sessions)).result(timeout=10)
    assert elapsed < 1.0
    assert count(sessions) == 1


def _write(db: sessionmaker[Session]) -> None:
    with db.begin() as s:
        s.add(entry())


def test_another_process_holding_the_lock_is_waited_for(db_url: str,
                                                        sessions: sessionmaker[Session]) -> None:
    """The busy timeout still covers writers outside this process (the `vdi` CLI), also
    when the broker opens a new connection meanwhile."""
    assert count(sessions) == 0  # the broker ran before: the file is in WAL mode
    other = sqlite3.connect(Path(db_url.removeprefix("sqlite:///")), isolation_level=None,
                            check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        threading.Timer(0.5, lambda: other.execute("COMMIT")).start()
        started = time.monotonic()
        _write(sessions)
        waited = time.monotonic() - started
    finally:
        time.sleep(0.6)
        other.close()
    assert 0.3 < waited < 10
    assert count(sessions) == 1


def test_reads_go_to_query_only_connections(engine: Engine,
                                            sessions: sessionmaker[Session]) -> None:
    reader = read_engine(engine)
    assert reader is not engine
    with reader.connect() as conn:
        assert conn.execute(text("PRAGMA query_only")).scalar() == 1
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA query_only")).scalar() == 0
    with sessions() as s:
        assert s.execute(text("PRAGMA query_only")).scalar() == 1
    with sessions.begin() as s:
        assert s.execute(text("PRAGMA query_only")).scalar() == 0


def test_disposing_the_engine_disposes_its_reader(db_url: str) -> None:
    engine = make_engine(db_url)
    reader = read_engine(engine)
    db = session_factory(engine)
    count(db)
    assert reader.pool.status().count("Connections in pool: 1") == 1, reader.pool.status()
    engine.dispose()
    assert "Connections in pool: 0" in reader.pool.status(), reader.pool.status()
