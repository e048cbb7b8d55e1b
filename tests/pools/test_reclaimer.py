"""The idle policy carried out (pools.reclaimer) on a real SQLite database and
FakeHypervisor, with the clock in the test's hand: no sleeping for minutes.

The console signals are written here as the brokers write them (web/console.py opens,
broker/signals.py's heartbeat and input flush, the close); the real tunnel writing them is
tested in tests/web/test_console.py and, end to end, in tests/e2e/test_idle_reclaim.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from broker.assignment import DesktopNotReady
from broker.idle import IdleNotices
from pools.hypervisor import ImageDisk
from pools.jobs.queue import JobKind
from pools.policy_file import parse_policy, read_policy_file
from pools.reclaim import Action, PolicyError, Verdict
from pools.reclaimer import Reclaimer
from pools.shifts import Shift
from tests.pools.test_pool_kinds import Rig, pool
from tests.pools.test_worker import clerk
from vdi.domain import DesktopState, PoolKind, Power
from vdi.models import DesktopRow, PoolRow, ReclaimRow

LAG_S = 10  # the worker's default signal lag: actions wait this long past their deadline

# Short office-hours values so that the test reads as a day at the window.
FLOATING = {"calendar": {"timezone": "Asia/Shanghai"},
            "shifts": {s.value: {"disconnect_grace_s": 180, "idle_warn_after_s": 600,
                                 "idle_countdown_s": 60, "idle_action": "log_off",
                                 "logoff_action": "log_off"} for s in Shift}}
DEDICATED = {"shifts": {s.value: {"disconnect_grace_s": 300, "idle_warn_after_s": 600,
                                  "idle_countdown_s": 60, "idle_action": "disconnect",
                                  "logoff_action": "shut_down"} for s in Shift}}


@pytest.fixture
def rig(db: sessionmaker[Session], guest_image: ImageDisk, tmp_path: Path) -> Iterator[Rig]:
    r = Rig(db, guest_image, tmp_path)
    yield r
    r.calls.close()


async def start(rig: Rig, kind: PoolKind, policy: dict[str, Any]) -> str:
    """A pool of `kind` with `policy`, one spare made, clerk1 holding it; its id."""
    rig.catalog.save_pool(pool(kind))
    with rig.db.begin() as s:
        s.execute(update(PoolRow).where(PoolRow.id == "window").values(reclaim_policy=policy))
    await rig.settle()
    return rig.assigner.assign("window", clerk(1)).id


def set_console(rig: Rig, desktop_id: str, **values: Any) -> None:
    with rig.db.begin() as s:
        s.execute(update(DesktopRow).where(DesktopRow.id == desktop_id).values(**values))


def open_console(rig: Rig, desktop_id: str) -> None:
    now = rig.clock()
    set_console(rig, desktop_id, console_since=now, console_seen_at=now)


def heartbeat(rig: Rig, desktop_id: str) -> None:
    set_console(rig, desktop_id, console_seen_at=rig.clock())


def close_console(rig: Rig, desktop_id: str) -> None:
    set_console(rig, desktop_id, console_since=None, console_seen_at=None,
                last_disconnect_at=rig.clock())


def reclaims(rig: Rig) -> list[ReclaimRow]:
    with rig.db() as s:
        return list(s.scalars(select(ReclaimRow).order_by(ReclaimRow.id)))


async def pass_time(rig: Rig, seconds: int, desktop_id: str, *, connected: bool) -> None:
    """Move the clock on in 30 s steps, the worker ticking after each; an open console
    keeps beating (its broker is alive), without input."""
    for _ in range(seconds // 30):
        rig.clock.advance(30)
        if connected:
            heartbeat(rig, desktop_id)
        await rig.settle(1)


async def test_an_idle_floating_desktop_is_warned_then_reverted_and_returned(rig: Rig) -> None:
    mine = await start(rig, PoolKind.FLOATING, FLOATING)
    disk_before = rig.fake.domains[rig.row(mine).domain_name].disk_serial
    open_console(rig, mine)
    await pass_time(rig, 600, mine, connected=True)
    assert rig.row(mine).warned_at is None  # 10 min without input, less the signal lag
    await pass_time(rig, 30, mine, connected=True)
    row = rig.row(mine)
    assert row.warned_at is not None and row.warning_deadline is not None
    # the clerk sees the whole countdown; the action waits the signal lag beyond it
    assert row.warning_deadline - row.warned_at == timedelta(seconds=60)
    # the clerk's page sees the countdown
    status = IdleNotices(rig.db, rig.clock).status("clerk1", "window")
    assert status.warning is not None and status.desktop_id == mine
    await pass_time(rig, 90, mine, connected=True)
    row = rig.row(mine)
    assert (row.state, row.assigned_user) == (DesktopState.READY.value, None)
    assert rig.fake.domains[row.domain_name].disk_serial != disk_before  # reverted
    [record] = reclaims(rig)
    assert (record.desktop_id, record.username, record.action, record.cause, record.shift) == (
        mine, "clerk1", Action.LOG_OFF.value, "idle", Shift.OFFICE.value)
    assert "no keyboard or mouse input" in record.reason
    # the clerk, back at the portal, learns why; connecting again makes it old news
    notices = IdleNotices(rig.db, rig.clock)
    notice = notices.notices("clerk1", ["window"])["window"]
    assert (notice.action, notice.cause) == ("log_off", "idle")
    assert notice.as_json()["seconds"] >= 11 * 60


async def test_input_after_the_warning_withdraws_it(rig: Rig) -> None:
    mine = await start(rig, PoolKind.FLOATING, FLOATING)
    open_console(rig, mine)
    await pass_time(rig, 660, mine, connected=True)
    assert rig.row(mine).warned_at is not None
    set_console(rig, mine, last_input_at=rig.clock())  # a key press, flushed by the broker
    await pass_time(rig, 30, mine, connected=True)
    row = rig.row(mine)
    assert (row.warned_at, row.state, row.assigned_user) == (
        None, DesktopState.ASSIGNED.value, "clerk1")
    # "I'm still here" counts as input too
    await pass_time(rig, 630, mine, connected=True)
    assert rig.row(mine).warned_at is not None
    assert IdleNotices(rig.db, rig.clock).still_here("clerk1", "window")
    await pass_time(rig, 120, mine, connected=True)
    assert rig.row(mine).state == DesktopState.ASSIGNED.value and not reclaims(rig)


async def test_a_closed_tab_keeps_the_desktop_through_the_grace(rig: Rig) -> None:
    mine = await start(rig, PoolKind.FLOATING, FLOATING)
    open_console(rig, mine)
    await pass_time(rig, 60, mine, connected=True)
    close_console(rig, mine)
    await pass_time(rig, 150, mine, connected=False)
    assert rig.row(mine).assigned_user == "clerk1"
    back = rig.assigner.assign("window", clerk(1))  # reconnects within the grace
    assert back.id == mine
    open_console(rig, mine)
    await pass_time(rig, 300, mine, connected=True)
    assert rig.row(mine).assigned_user == "clerk1" and not reclaims(rig)
    close_console(rig, mine)  # gone for good this time
    await pass_time(rig, 210, mine, connected=False)
    assert rig.row(mine).assigned_user is None
    [record] = reclaims(rig)
    assert (record.action, record.cause) == ("log_off", "disconnected")


async def test_a_broker_that_stops_reporting_counts_as_a_closed_console(rig: Rig) -> None:
    """The broker holding the console died: its heartbeat stops; the grace runs from the
    last heartbeat, not from when the worker noticed."""
    mine = await start(rig, PoolKind.FLOATING, FLOATING)
    open_console(rig, mine)
    await pass_time(rig, 60, mine, connected=True)
    await pass_time(rig, 150, mine, connected=False)  # no heartbeat: stale after 60 s
    assert rig.row(mine).assigned_user == "clerk1"
    await pass_time(rig, 60, mine, connected=False)
    assert rig.row(mine).assigned_user is None
    assert reclaims(rig)[0].cause == "disconnected"


class RacingReclaimer(Reclaimer):
    """Between reading a desktop and writing its reclaim, something else happens."""

    def __init__(self, *args: Any, meanwhile: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.meanwhile = meanwhile

    def _apply(self, *args: Any, **kwargs: Any) -> bool:
        self.meanwhile()
        return super()._apply(*args, **kwargs)


async def test_a_reconnect_during_the_reclaim_wins(rig: Rig) -> None:
    mine = await start(rig, PoolKind.FLOATING, FLOATING)
    close_console(rig, mine)
    rig.clock.advance(180 + LAG_S + 1)
    racer = RacingReclaimer(rig.db, clock=rig.clock,
                            meanwhile=lambda: open_console(rig, mine))
    [outcome] = racer.run_once()
    assert outcome.decision.verdict is Verdict.ACT and not outcome.applied
    row = rig.row(mine)
    assert (row.state, row.assigned_user) == (DesktopState.ASSIGNED.value, "clerk1")
    assert not reclaims(rig) and not [j for j in rig.jobs() if j.kind == JobKind.REVERT]


async def test_input_during_the_idle_action_wins(rig: Rig) -> None:
    mine = await start(rig, PoolKind.FLOATING, FLOATING)
    open_console(rig, mine)
    await pass_time(rig, 660, mine, connected=True)
    rig.clock.advance(60 + 2 * LAG_S)
    heartbeat(rig, mine)
    racer = RacingReclaimer(rig.db, clock=rig.clock, meanwhile=lambda: set_console(
        rig, mine, last_input_at=rig.clock()))
    [outcome] = racer.run_once()
    assert outcome.decision.acts and not outcome.applied
    assert rig.row(mine).assigned_user == "clerk1" and not reclaims(rig)


async def test_a_dedicated_desktop_is_shut_down_keeping_its_disk_and_starts_on_connect(
        rig: Rig) -> None:
    mine = await start(rig, PoolKind.DEDICATED, DEDICATED)
    name = rig.row(mine).domain_name
    disk = rig.fake.domains[name].disk_serial
    close_console(rig, mine)
    await pass_time(rig, 330, mine, connected=False)
    row = rig.row(mine)
    assert (row.state, row.assigned_user, row.power) == (
        DesktopState.ASSIGNED.value, "clerk1", Power.OFF.value)
    assert not rig.fake.domains[name].running
    assert rig.fake.domains[name].disk_serial == disk
    [record] = reclaims(rig)
    assert (record.action, record.cause) == (Action.SHUT_DOWN.value, "disconnected")
    # connecting again starts it, on the same disk
    with pytest.raises(DesktopNotReady):
        rig.assigner.assign("window", clerk(1))
    await rig.settle()
    again = rig.assigner.assign("window", clerk(1))
    assert again.id == mine and again.power is Power.ON
    assert rig.fake.domains[name].running and rig.fake.domains[name].disk_serial == disk


async def test_a_dedicated_desktop_is_never_reverted_whatever_the_policy_says(
        rig: Rig) -> None:
    """A policy cannot ask for a revert (refused when set); the harshest one it can ask
    for, shut down at once when idle or gone, acts: twice, and the disk stays."""
    with pytest.raises(PolicyError, match="dedicated"):
        parse_policy({"shifts": {"office": {"idle_action": "log_off"}}}, persistent=True,
                     max_size=3)
    harsh = parse_policy({"shifts": {s.value: {
        "disconnect_grace_s": 0, "idle_warn_after_s": 600, "idle_countdown_s": 60,
        "idle_action": "shut_down", "logoff_action": "shut_down"} for s in Shift}},
        persistent=True, max_size=3)
    mine = await start(rig, PoolKind.DEDICATED, harsh.reclaim.to_json())
    name = rig.row(mine).domain_name
    disk = rig.fake.domains[name].disk_serial
    # idle at the console: warned, then shut down when the countdown ends
    open_console(rig, mine)
    await pass_time(rig, 630, mine, connected=True)
    assert rig.row(mine).warned_at is not None
    await pass_time(rig, 90, mine, connected=True)
    row = rig.row(mine)
    assert (row.state, row.assigned_user, row.power) == (
        DesktopState.ASSIGNED.value, "clerk1", Power.OFF.value)
    assert not rig.fake.domains[name].running
    # connecting starts it again; the clerk closes the console: shut down past the grace
    with pytest.raises(DesktopNotReady):
        rig.assigner.assign("window", clerk(1))
    await rig.settle()
    assert rig.assigner.assign("window", clerk(1)).id == mine
    open_console(rig, mine)
    close_console(rig, mine)
    await pass_time(rig, 30, mine, connected=False)
    row = rig.row(mine)
    assert (row.state, row.assigned_user, row.power) == (
        DesktopState.ASSIGNED.value, "clerk1", Power.OFF.value)
    assert [(r.action, r.cause) for r in reclaims(rig)] == [
        (Action.SHUT_DOWN.value, "idle"), (Action.SHUT_DOWN.value, "disconnected")]
    # the same domain on the same disk throughout; never a revert or a removal
    assert rig.fake.domains[name].disk_serial == disk
    assert {j.kind for j in rig.jobs() if j.desktop_id == mine} == {
        JobKind.PROVISION.value, JobKind.SHUT_DOWN.value, JobKind.RESTART.value}


def test_the_policy_file(tmp_path: Path) -> None:
    f = tmp_path / "window.toml"
    f.write_text("""
[calendar]
working_days = ["mon", "tue", "wed", "thu", "fri"]
opens = 08:30:00
closes = "17:30"
holidays = [2027-02-11]
makeup_days = ["2027-02-07"]

[shifts.office]
idle_warn_after_s = 1200
idle_action = "log_off"

[spares]
mode = "forecast"
levels = [{ days = "working", at = 08:45:00, min_ready = 4 }]
""", encoding="utf-8")
    policy = read_policy_file(f, persistent=False, max_size=6)
    office = policy.reclaim.shifts[Shift.OFFICE]
    assert (office.idle_warn_after_s, office.idle_action) == (1200, Action.LOG_OFF)
    assert office.disconnect_grace_s == 180  # left out: the default
    stored = policy.to_json()
    assert stored["calendar"]["holidays"] == ["2027-02-11"]
    assert stored["spares"]["levels"] == [{"days": "working", "at": "08:45", "min_ready": 4}]
    too_many = tmp_path / "big.toml"
    too_many.write_text(f.read_text().replace("min_ready = 4", "min_ready = 40"))
    with pytest.raises(PolicyError, match="max_size"):
        read_policy_file(too_many, persistent=False, max_size=6)
    bad = tmp_path / "bad.toml"
    bad.write_text("[shifts.lunch]\nidle_action = 'log_off'\n")
    with pytest.raises(PolicyError, match="lunch"):
        read_policy_file(bad, persistent=False, max_size=6)
    with pytest.raises(PolicyError, match="unknown part"):
        parse_policy({"spare": {}}, persistent=False, max_size=6)
    with pytest.raises(PolicyError, match="not valid TOML"):
        (tmp_path / "broken.toml").write_text("[calendar\n")
        read_policy_file(tmp_path / "broken.toml", persistent=False, max_size=6)


# --- spare levels over the day ---------------------------------------------------------


def ready_count(rig: Rig) -> int:
    return sum(1 for d in rig.desktops() if d.state is DesktopState.READY)


async def test_spares_follow_the_schedule_up_before_opening_and_down_after(rig: Rig) -> None:
    """The clock starts on a Monday at 16:00 in Shanghai; a schedule warms 3 spares from
    08:45 on working days and keeps 1 from 17:00. Spares above the level that waited 10
    minutes unclaimed are removed, the longest waiting first."""
    rig.catalog.save_pool(pool(PoolKind.FLOATING, min_ready=0, max_size=4))
    keep = {"shifts": {s.value: {"disconnect_grace_s": "off", "idle_warn_after_s": "off"}
                       for s in Shift}}  # here only the spares are under test
    with rig.db.begin() as s:
        s.execute(update(PoolRow).where(PoolRow.id == "window").values(
            reclaim_policy=keep, spare_schedule={
            "mode": "static", "levels": [{"days": "working", "at": "08:45", "min_ready": 3},
                                         {"days": "working", "at": "17:00", "min_ready": 1}]}))
    await rig.settle()
    assert ready_count(rig) == 3  # 16:00: the 08:45 level holds
    claimed = rig.assigner.assign("window", clerk(1))
    await rig.settle()
    assert ready_count(rig) == 3  # topped up again
    rig.clock.advance(3600)  # 17:00
    await rig.settle()
    assert ready_count(rig) == 1  # they waited an hour: removed at once
    assert rig.row(claimed.id).state == DesktopState.ASSIGNED.value  # the clerk's stays
    assert len([j for j in rig.jobs() if j.kind == JobKind.REMOVE]) == 2
    rig.clock.advance(300)
    rig.assigner.log_off("window", "clerk1")  # reverted: a fresh spare above the level
    await rig.settle()
    # the spare that waited longest goes; the one just back waits its 10 minutes
    assert ready_count(rig) == 1 and rig.row(claimed.id).state == DesktopState.READY.value
    assert sum(1 for d in rig.desktops() if d.state is DesktopState.DELETED) == 3
    rig.clock.advance(15 * 3600 + 41 * 60)  # 08:46 the next day: warm again
    await rig.settle()
    assert ready_count(rig) == 3


async def test_a_spare_claimed_after_another_clerk_starts_afresh(rig: Rig) -> None:
    """The last clerk's console times stay on a row only until it is claimed again: the
    new clerk is not judged by them (they would look disconnected for hours)."""
    mine = await start(rig, PoolKind.FLOATING, FLOATING)
    rig.assigner.log_off("window", "clerk1")
    await rig.settle()
    hours_ago = rig.clock() - timedelta(hours=3)
    set_console(rig, mine, console_since=hours_ago, console_seen_at=hours_ago,
                last_disconnect_at=hours_ago, warned_at=hours_ago,
                warning_deadline=hours_ago, last_input_at=hours_ago)
    again = rig.assigner.assign("window", clerk(2))
    assert again.id == mine
    row = rig.row(mine)
    assert (row.console_since, row.console_seen_at, row.last_disconnect_at, row.warned_at,
            row.last_input_at) == (None, None, None, None, None)
    await pass_time(rig, 150, mine, connected=False)  # within the grace of the claim
    assert rig.row(mine).assigned_user == "clerk2" and not reclaims(rig)


async def test_still_here_takes_the_warning_down_at_once(rig: Rig) -> None:
    mine = await start(rig, PoolKind.FLOATING, FLOATING)
    open_console(rig, mine)
    await pass_time(rig, 660, mine, connected=True)
    notices = IdleNotices(rig.db, rig.clock)
    assert notices.status("clerk1", "window").warning is not None
    assert notices.still_here("clerk1", "window")
    assert notices.status("clerk1", "window").warning is None  # the page's next poll
    assert not notices.still_here("clerk2", "window")  # not theirs: nothing changes


@pytest.mark.parametrize("bad, says", [
    ({"calendar": {"opens": "08:30+08:00"}}, "without an offset"),
    ({"shifts": {"office": {"idle_warn_after_s": 10**12}}}, "between 0 and"),
    ({"shifts": {"office": {"idle_warn_after_s": float("inf")}}}, "not a number"),
    ({"shifts": {"office": "x"}}, "malformed"),
    ({"shifts": "x"}, "must be a table"),
    ({"spares": {"levels": ["08:45"]}}, "spare level"),
    ({"spares": {"levels": [{"at": "08:45+08:00", "min_ready": 1}]}}, "spare level"),
    ({"spares": {"lead_s": float("inf")}}, "numbers"),
])
def test_a_policy_that_could_not_run_is_refused_with_a_reason(bad: dict[str, Any],
                                                              says: str) -> None:
    with pytest.raises(PolicyError, match=says):
        parse_policy(bad, persistent=False, max_size=6)
