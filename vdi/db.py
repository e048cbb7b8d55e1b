"""Engine creation and schema migration (Alembic), shared by every process.

The one rule for code that uses the database: **open write transactions explicitly**
(`with sessions.begin() as s:` or `session.begin()`); a plain `with sessions() as s:`
session is for reading. On PostgreSQL a write is a READ COMMITTED transaction and a read
runs without one (autocommit: READ COMMITTED gives each statement its own snapshot
anyway, and the BEGIN and ROLLBACK round trips are saved). On SQLite the difference
matters more for a busy broker:

- a read (a session's automatic transaction) is a deferred `BEGIN` on a connection of a
  second, reading pool whose connections are `PRAGMA query_only`: in WAL mode it takes
  no lock and waits for no writer, and a write in it fails at once with a message naming
  this rule (instead of a lock upgrade that can fail later with "database is locked");
- a write takes the write lock up front with `BEGIN IMMEDIATE` (no lock-upgrade
  deadlocks), and writers of one process queue on an in-process lock first, so a waiting
  writer wakes the moment the previous one commits instead of sleeping in SQLite's busy
  handler (which polls with back-off sleeps of up to 100 ms). Other processes (the `vdi`
  CLI) still meet SQLite's busy timeout. A write transaction opened by a thread that
  already holds one fails at once: it would wait for itself.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import CursorResult, Result, make_url
from sqlalchemy.exc import DisconnectionError, InvalidRequestError, OperationalError
from sqlalchemy.orm import Session, SessionTransactionOrigin, sessionmaker

from vdi.audit import chain_new_records

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_TIMEOUT_S = 30.0
# A PostgreSQL connection idle in the pool longer than this is checked before use.
PING_IDLE_S = 5.0
_IDLE_SINCE = "vdi_idle_since"
_READ_ONLY_WRITE = "attempt to write a readonly database"


class WriteLock:
    """One SQLite writer at a time per database file within this process."""

    def __init__(self, timeout_s: float) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._timeout_s = timeout_s

    def acquire(self) -> None:
        """Raises sqlalchemy.exc.OperationalError, as SQLite's own lock timeout does."""
        if self._owner == threading.get_ident():
            raise _locked("nested write transaction: this thread already holds one on this "
                          "database and would wait for itself (commit the first one before "
                          "opening another)")
        if not self._lock.acquire(timeout=self._timeout_s):
            raise _locked(f"database is locked: a write transaction of this process held "
                          f"it for {self._timeout_s:.0f} s")
        self._owner = threading.get_ident()

    def release(self) -> None:
        self._owner = None
        self._lock.release()


def _locked(message: str) -> OperationalError:
    return OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError(message))


_write_locks: dict[str, WriteLock] = {}
_write_locks_guard = threading.Lock()


def _write_lock_for(database: str) -> WriteLock:
    key = str(Path(database).resolve()) if database not in ("", ":memory:") else database
    with _write_locks_guard:
        return _write_locks.setdefault(key, WriteLock(SQLITE_TIMEOUT_S))


class _SqliteConnection(sqlite3.Connection):
    """A pysqlite connection that starts its own transactions (see the module doc) and
    gives the process's write lock back when its transaction ends, however it ends.
    A reader (`write_lock` None) is `query_only` for its whole life: switching the pragma
    per transaction would make SQLite recompile every statement after each switch."""

    write_lock: WriteLock | None = None
    _holds_write_lock = False

    def begin(self) -> None:
        if self.write_lock is None:
            self.execute("BEGIN")
            return
        self.write_lock.acquire()
        self._holds_write_lock = True
        try:
            self.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._release_write_lock()
            raise

    def _release_write_lock(self) -> None:
        if self._holds_write_lock and self.write_lock is not None:
            self._holds_write_lock = False
            self.write_lock.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._release_write_lock()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._release_write_lock()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release_write_lock()


# The reading engine of each SQLite engine make_engine() returned (disposed with it).
_readers: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()


def _sqlite_engine(url: str, *, lock: WriteLock | None) -> Engine:
    """A writer's engine (`lock` given) or a reader's (query_only connections)."""
    engine = create_engine(url, connect_args={"timeout": SQLITE_TIMEOUT_S,
                                              "check_same_thread": False,
                                              "factory": _SqliteConnection},
                           pool_size=8, max_overflow=8, pool_use_lifo=True)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let the 'begin' hook below issue BEGIN
        dbapi_conn.write_lock = lock
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        if lock is None:
            cur.execute("PRAGMA query_only=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.connection.driver_connection.begin()

    if lock is None:
        @event.listens_for(engine, "handle_error")
        def _on_error(context: Any) -> Exception | None:
            if _READ_ONLY_WRITE in str(context.original_exception):
                return InvalidRequestError(
                    "write in a read transaction: open write transactions with "
                    "sessionmaker.begin() or session.begin() (see vdi.db)")
            return None

    return engine


def make_engine(url: str) -> Engine:
    """An engine tuned for concurrent use. SQLite: WAL, a busy timeout, writes that take
    the write lock up front, and a reading engine beside it for sessions' automatic
    transactions (module doc; `read_engine`). PostgreSQL (psycopg 3,
    `postgresql+psycopg://`): a pool whose idle connections are checked before use, so
    a server restarted while the broker was quiet costs one failed check, not a failed
    request."""
    if url.startswith("sqlite"):
        engine = _sqlite_engine(url, lock=_write_lock_for(make_url(url).database or ""))
        reader = _sqlite_engine(url, lock=None)
        _readers[engine] = reader
        event.listen(engine, "engine_disposed", lambda _engine: reader.dispose())
        return engine
    return _postgresql_engine(url)


def _postgresql_engine(url: str) -> Engine:
    """A pool that checks a connection before use only when it sat idle for PING_IDLE_S.

    SQLAlchemy's pool_pre_ping would add a round trip to every checkout (a login makes
    eight): about 13 % of the broker's CPU in a login storm. A connection used moments
    ago is used as it is; if the server went away since, that request fails and the
    disconnect invalidates the whole pool, so the next ones reconnect."""
    engine = create_engine(url, pool_size=10, max_overflow=10, pool_use_lifo=True)

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since < PING_IDLE_S:
            return  # a new connection, or one that worked moments ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as e:
            # the pool drops this connection and checks out another (documented protocol)
            raise DisconnectionError(f"idle connection failed its check: {e}") from e

    return engine


def read_engine(engine: Engine) -> Engine:
    """Where reads go: SQLite's reading engine; for PostgreSQL the engine in autocommit
    (READ COMMITTED gives each statement its own snapshot anyway, so a read loses
    nothing without a transaction and saves the BEGIN and ROLLBACK round trips)."""
    reader = _readers.get(engine)
    if reader is not None:
        return reader
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


class _RoutingSession(Session):
    """Sends the statements of a session's automatic transaction through the reading
    engine (`read_bind`), those of an explicit begin() through the engine itself."""

    read_bind: Engine

    def get_bind(self, *args: Any, **kwargs: Any) -> Any:
        bind = super().get_bind(*args, **kwargs)
        trans = self.get_transaction()
        # no transaction yet: this statement is about to start the automatic one
        if trans is None or trans.origin is SessionTransactionOrigin.AUTOBEGIN:
            return self.read_bind if bind is self.bind else bind
        return bind


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on `engine`. Writes: `with factory.begin() as s:` (module doc)."""
    reader = read_engine(engine)
    if reader is engine:
        factory = sessionmaker(engine, expire_on_commit=False)
    else:
        session_class = type(f"{engine.dialect.name.title()}Session", (_RoutingSession,),
                             {"read_bind": reader})
        factory = sessionmaker(engine, class_=session_class, expire_on_commit=False)
    # every audit record is chained as it is written (vdi.audit)
    event.listen(factory, "before_flush", chain_new_records)
    return factory


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the schema to the newest revision. Idempotent."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")


def rows_changed(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE matched (its compare-and-set succeeded)."""
    if not isinstance(result, CursorResult):
        raise TypeError("rows_changed needs the result of an UPDATE or DELETE")
    return int(result.rowcount)
