"""Idle actions and the spare forecast carried out by the pool worker, on a real SQLite
database and FakeHypervisor with the clock in the test's hand.

test_reclaimer.py covers log-off and shut-down; this module the other paths a policy
can take: disconnect (the console is taken, the desktop stays the clerk's through the
grace), suspend and resume of a dedicated desktop, a pool whose stored policy no longer
parses next to a good one, and spare levels forecast from the claims the assigner
recorded. The tunnel closing on a disconnect is tested on a real console in
tests/web/test_idle_kick.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from broker.assignment import DesktopNotReady
from pools.hypervisor import ImageDisk
from pools.jobs.queue import JobKind
from pools.policy_file import parse_policy
from pools.reclaim import Action
from pools.shifts import Shift
from pools.worker import pool_spare_level
from tests.pools.test_pool_kinds import Rig, pool
from tests.pools.test_reclaimer import (
    close_console,
    open_console,
    pass_time,
    reclaims,
    start,
)
from tests.pools.test_worker import clerk
from vdi.domain import DesktopState, PoolKind, Power
from vdi.models import PoolRow


@pytest.fixture
def rig(db: sessionmaker[Session], guest_image: ImageDisk, tmp_path: Path) -> Iterator[Rig]:
    r = Rig(db, guest_image, tmp_path)
    yield r
    r.calls.close()


def every_shift(persistent: bool, **values: Any) -> dict[str, Any]:
    """The same idle policy in every shift (the test does not depend on the hour),
    checked as `vdi pool-policy` checks it, as stored."""
    return parse_policy({"shifts": {s.value: values for s in Shift}}, persistent=persistent,
                        max_size=3).reclaim.to_json()


# --- disconnect --------------------------------------------------------------------------


async def test_the_disconnect_action_takes_the_console_and_the_grace_follows(
        rig: Rig) -> None:
    mine = await start(rig, PoolKind.FLOATING, every_shift(
        False, disconnect_grace_s=180, idle_warn_after_s=600, idle_countdown_s=60,
        idle_action="disconnect", logoff_action="log_off"))
    open_console(rig, mine)
    await pass_time(rig, 630, mine, connected=True)
    assert rig.row(mine).warned_at is not None
    await pass_time(rig, 90, mine, connected=True)
    row = rig.row(mine)
    # the brokers close the consoles opened before this moment; the desktop stays hers
    assert row.kicked_at == rig.clock() and row.warned_at is None
    assert (row.state, row.assigned_user, row.power) == (
        DesktopState.ASSIGNED.value, "clerk1", Power.ON.value)
    assert (row.console_since, row.console_seen_at, row.last_disconnect_at) == (
        None, None, rig.clock())
    [record] = reclaims(rig)
    assert (record.action, record.cause) == (Action.DISCONNECT.value, "idle")
    assert not [j for j in rig.jobs() if j.desktop_id == mine and j.kind != "provision"]
    # back within the grace: the same desktop, nothing lost
    await pass_time(rig, 150, mine, connected=False)
    assert rig.assigner.assign("window", clerk(1)).id == mine
    # not back: the grace runs out and the log-off action follows (floating: reverted)
    await pass_time(rig, 60, mine, connected=False)
    row = rig.row(mine)
    assert (row.state, row.assigned_user) == (DesktopState.READY.value, None)
    assert [(r.action, r.cause) for r in reclaims(rig)] == [
        (Action.DISCONNECT.value, "idle"), (Action.LOG_OFF.value, "disconnected")]


# --- suspend and resume --------------------------------------------------------------------


async def test_a_dedicated_desktop_is_suspended_and_resumes_on_connect(rig: Rig) -> None:
    mine = await start(rig, PoolKind.DEDICATED, every_shift(
        True, disconnect_grace_s=300, idle_warn_after_s=600, idle_countdown_s=60,
        idle_action="suspend", logoff_action="suspend"))
    name = rig.row(mine).domain_name
    disk = rig.fake.domains[name].disk_serial
    domain = rig.fake.domains[name]
    open_console(rig, mine)
    await pass_time(rig, 720, mine, connected=True)
    row = rig.row(mine)
    assert (row.state, row.assigned_user, row.power) == (
        DesktopState.ASSIGNED.value, "clerk1", Power.SUSPENDED.value)
    assert (domain.running, domain.suspended) == (False, True)  # memory saved, host freed
    [record] = reclaims(rig)
    assert (record.action, record.cause) == (Action.SUSPEND.value, "idle")
    # nothing more happens to a suspended desktop, however long it waits
    await pass_time(rig, 3600, mine, connected=False)
    assert rig.row(mine).power == Power.SUSPENDED.value and len(reclaims(rig)) == 1
    # the clerk connects: it is started again (resumed from its saved memory)
    with pytest.raises(DesktopNotReady):
        rig.assigner.assign("window", clerk(1))
    await rig.settle()
    again = rig.assigner.assign("window", clerk(1))
    assert again.id == mine and again.power is Power.ON
    assert rig.fake.domains[name] is domain  # the same domain started, not a new one
    assert (domain.running, domain.suspended, domain.disk_serial) == (True, False, disk)
    assert [j.kind for j in rig.jobs() if j.desktop_id == mine] == [
        JobKind.PROVISION.value, JobKind.SUSPEND.value, JobKind.RESTART.value]
    # the console closed past the grace: suspended again
    open_console(rig, mine)
    close_console(rig, mine)
    await pass_time(rig, 330, mine, connected=False)
    assert rig.row(mine).power == Power.SUSPENDED.value
    assert reclaims(rig)[-1].cause == "disconnected"


# --- a pool whose stored policy no longer parses ------------------------------------------


async def test_a_pool_with_an_unusable_stored_policy_runs_under_the_defaults(
        rig: Rig) -> None:
    """A policy stored by hand (or before a check existed) that no longer parses: the
    other pools' desktops are still handled, and the dedicated pool runs under the
    dedicated defaults (shut down 30 minutes after its console closed), never reverted."""
    rig.catalog.save_pool(pool(PoolKind.DEDICATED, pool_id="own"))
    with rig.db.begin() as s:
        s.execute(update(PoolRow).where(PoolRow.id == "own").values(
            reclaim_policy={"shifts": {"office": {"idle_action": "log_off"}}}))
    mine = await start(rig, PoolKind.FLOATING, every_shift(
        False, disconnect_grace_s=180, idle_warn_after_s="off", logoff_action="log_off"))
    own = rig.assigner.assign("own", clerk(1)).id
    own_disk = rig.fake.domains[rig.row(own).domain_name].disk_serial
    for desktop_id in (mine, own):
        close_console(rig, desktop_id)
    await pass_time(rig, 4 * 3600, mine, connected=False)
    assert rig.row(mine).state == DesktopState.READY.value  # taken back and reverted
    assert sorted((r.desktop_id, r.action, r.cause) for r in reclaims(rig)) == sorted([
        (mine, Action.LOG_OFF.value, "disconnected"),
        (own, Action.SHUT_DOWN.value, "disconnected")])
    row = rig.row(own)
    assert (row.state, row.assigned_user, row.power) == (
        DesktopState.ASSIGNED.value, "clerk1", Power.OFF.value)
    assert rig.fake.domains[row.domain_name].disk_serial == own_disk
    assert not [j for j in rig.jobs() if j.desktop_id == own
                and j.kind in (JobKind.REVERT.value, JobKind.REMOVE.value)]


# --- the spare forecast ---------------------------------------------------------------------


def ready(rig: Rig) -> int:
    return sum(1 for d in rig.desktops() if d.state is DesktopState.READY)


async def test_spares_follow_the_forecast_of_last_weeks_claims(rig: Rig) -> None:
    """The clock starts on Monday 2026-01-05 at 16:00 in Shanghai. Three clerks get a
    desktop between 16:05 and 16:20; the next Monday at 16:00 the worker keeps three
    spares ready for the half hour ahead; on the Tuesday at 16:00, whose past weeks had
    no claims then, the pool's own min_ready."""
    rig.catalog.save_pool(pool(PoolKind.FLOATING, min_ready=1, max_size=6))
    keep = {s.value: {"disconnect_grace_s": "off", "idle_warn_after_s": "off"}
            for s in Shift}  # here only the spares are under test
    with rig.db.begin() as s:
        s.execute(update(PoolRow).where(PoolRow.id == "window").values(
            reclaim_policy={"shifts": keep},
            spare_schedule={"mode": "forecast", "lead_s": 1800, "weeks": 4, "levels": []}))
    monday = rig.clock()
    await rig.settle()
    assert ready(rig) == 1  # no claims in the past four Mondays: min_ready
    for n, minutes in ((1, 5), (2, 10), (3, 20)):
        rig.clock.now = monday + timedelta(minutes=minutes)
        rig.assigner.assign("window", clerk(n))  # each claim is recorded for the forecast
        await rig.settle()
        assert ready(rig) == 1
    for n in (1, 2, 3):  # the evening: reverted, back to the pool, then above its level
        rig.clock.now = monday + timedelta(hours=2)
        rig.assigner.log_off("window", f"clerk{n}")
    await rig.settle()
    rig.clock.advance(11 * 60)
    await rig.settle()
    assert ready(rig) == 1

    rig.clock.now = monday + timedelta(weeks=1)
    with rig.db() as s:
        level, forecast = pool_spare_level(s, pool(PoolKind.FLOATING, min_ready=1,
                                                   max_size=6), rig.clock())
    assert forecast and level.min_ready == 3, level
    assert level.reason.startswith("forecast: 3 = the most clerks"), level.reason
    await rig.settle()
    assert ready(rig) == 3

    rig.clock.now = monday + timedelta(weeks=1, days=1)  # Tuesday 16:00
    await rig.settle()  # the two above the level waited a day: removed at once
    assert ready(rig) == 1
