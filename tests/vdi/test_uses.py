"""Desktop uses (vdi/uses.py) as the state machine writes them: a console opening begins
one with the pool and office of the time, the heartbeat keeps it alive, closing the
console (or any change that takes the console away) ends it, and a desktop never has two
open. On SQLite and on a real PostgreSQL server (the insert reads the desktop's pool)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from harness.pg_server import PgServer
from vdi import desktops
from vdi.catalog import Catalog
from vdi.db import make_engine, session_factory
from vdi.domain import ConsoleKind, DesktopState, Pool, PoolKind, Power
from vdi.models import DesktopRow, DesktopUseRow, OfficeRow, PoolRow

T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture(params=["sqlite", "postgresql"])
def window(request: pytest.FixtureRequest, db: sessionmaker[Session]
           ) -> Iterator[sessionmaker[Session]]:
    """A pool of office `jx` with one desktop assigned to clerk1, on either database."""
    engine = None
    if request.param == "postgresql":
        pg: PgServer = request.getfixturevalue("pg")
        engine = make_engine(pg.url)
        db = session_factory(engine)
        with db.begin() as s:
            for table in (DesktopUseRow, DesktopRow, PoolRow, OfficeRow):
                s.execute(delete(table))
    with db.begin() as s:
        s.add(OfficeRow(id="jx", name="建新街道", clerk_groups=[], helpdesk_groups=[],
                        created_at=T0))
    Catalog(db).save_pool(Pool(id="window", display_name="Window", kind=PoolKind.FLOATING,
                               image="demo", vcpus=1, memory_mib=128, min_ready=0,
                               max_size=4, entitled_groups=("cn=staff",), office="jx"))
    with db.begin() as s:
        s.add(DesktopRow(id="d1", pool_id="window", host_uri="fake://a", domain_name="v-d1",
                         state=DesktopState.ASSIGNED.value, assigned_user="clerk1",
                         assigned_at=T0, power=Power.ON.value, console_kind="vnc",
                         console_host="127.0.0.1", console_port=5901, created_at=T0,
                         updated_at=T0, image_version=1))
    yield db
    if engine is not None:
        engine.dispose()


def uses(db: sessionmaker[Session]) -> list[dict[str, Any]]:
    with db() as s:
        return [{"pool": u.pool_id, "office": u.office, "user": u.username,
                 "start": u.started_at, "seen": u.seen_at, "end": u.ended_at}
                for u in s.scalars(select(DesktopUseRow).order_by(DesktopUseRow.id))]


def run(db: sessionmaker[Session], call: Callable[[Session], object]) -> object:
    with db.begin() as s:
        return call(s)


def open_at(db: sessionmaker[Session], minutes: float) -> None:
    assert run(db, lambda s: desktops.open_console(s, "d1", "clerk1", ConsoleKind.VNC,
                                                   at(minutes))) is not None


def test_a_console_use_from_open_to_close(window: sessionmaker[Session]) -> None:
    open_at(window, 0)
    run(window, lambda s: desktops.console_heartbeat(s, ["d1"], at(10)))
    assert uses(window) == [{"pool": "window", "office": "jx", "user": "clerk1",
                             "start": at(0), "seen": at(10), "end": None}]
    run(window, lambda s: desktops.console_heartbeat(s, ["d1"], at(24)))
    assert run(window, lambda s: desktops.close_console(s, "d1", "clerk1", at(25)))
    assert uses(window)[0]["end"] == at(25)
    run(window, lambda s: desktops.console_heartbeat(s, ["d1"], at(30)))
    assert uses(window)[0]["seen"] == at(24), "an ended use is not seen again"


def test_a_use_left_open_by_a_dead_broker_ends_at_its_last_sight(
        window: sessionmaker[Session]) -> None:
    open_at(window, 0)
    run(window, lambda s: desktops.console_heartbeat(s, ["d1"], at(40)))
    # the broker died at minute 40; the clerk comes back the next morning
    open_at(window, 15 * 60)
    got = uses(window)
    assert [(u["start"], u["end"]) for u in got] == [(at(0), at(40)), (at(15 * 60), None)]


def test_a_second_console_ends_the_first_use(window: sessionmaker[Session]) -> None:
    open_at(window, 0)
    open_at(window, 5)
    got = uses(window)
    assert [(u["start"], u["end"]) for u in got] == [(at(0), at(5)), (at(5), None)]


def test_a_console_that_does_not_open_begins_no_use(window: sessionmaker[Session]) -> None:
    assert run(window, lambda s: desktops.open_console(
        s, "d1", "someone-else", ConsoleKind.VNC, at(0))) is None
    assert uses(window) == []


def _read() -> desktops.AsRead:
    return desktops.AsRead(desktop_id="d1", assigned_user="clerk1", power=Power.ON,
                           console_since=at(0), console_seen_at=at(0),
                           last_disconnect_at=None, last_input_at=None, warned_at=None)


def uses_seen(s: Session, now: datetime) -> None:
    from vdi import uses as use_rows
    use_rows.seen(s, ["d1"], now)


ENDINGS: dict[str, Callable[[Session], bool]] = {
    "log_off": lambda s: desktops.log_off(s, "d1", "clerk1", at(7)),
    "reclaim_on_host": lambda s: desktops.reclaim_on_host(
        s, "d1", state=DesktopState.ASSIGNED, host_uri="fake://a", now=at(7)),
    "start_removal": lambda s: desktops.start_removal(
        s, "d1", state=DesktopState.ASSIGNED, owner="clerk1", now=at(7)),
    "kick_console": lambda s: desktops.kick_console(s, _read(), at(7)),
    "log_off_idle": lambda s: desktops.log_off_idle(s, _read(), at(7)),
    "power_down": lambda s: desktops.power_down(s, _read(), Power.OFF, at(7)),
}


@pytest.mark.parametrize("name", sorted(ENDINGS))
def test_taking_the_console_away_ends_the_use(window: sessionmaker[Session],
                                              name: str) -> None:
    open_at(window, 0)
    run(window, lambda s: uses_seen(s, at(6)))  # the heartbeat, not the idle signals
    assert run(window, ENDINGS[name])
    assert [(u["start"], u["end"]) for u in uses(window)] == [(at(0), at(7))]


def test_a_refused_change_leaves_the_use_open(window: sessionmaker[Session]) -> None:
    open_at(window, 0)
    assert not run(window, lambda s: desktops.log_off(s, "d1", "not-the-clerk", at(7)))
    assert uses(window)[0]["end"] is None
