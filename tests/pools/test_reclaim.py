"""The idle policy core (pools/reclaim.py) and the office calendar (pools/shifts.py) on
tables of cases: pure functions, no database, no clock but the one passed in."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest

from pools.reclaim import (
    Action,
    Cause,
    Decision,
    Facts,
    IdlePolicy,
    PolicyError,
    Power,
    Verdict,
    decide,
)
from pools.shifts import Calendar, ReclaimPolicy, Shift
from pools.spares import DayKind, SpareLevel, SpareMode, SpareSchedule, spare_level
from vdi.domain import DesktopState

T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai
POLICY = IdlePolicy(disconnect_grace_s=180, idle_warn_after_s=600, idle_countdown_s=60,
                    idle_action=Action.LOG_OFF, logoff_action=Action.LOG_OFF)
DEDICATED = IdlePolicy(disconnect_grace_s=180, idle_warn_after_s=600, idle_countdown_s=60,
                       idle_action=Action.SHUT_DOWN, logoff_action=Action.SUSPEND)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def facts(**changes: object) -> Facts:
    """A floating desktop a clerk got at T0 and uses through an open console."""
    base = Facts(desktop_id="d1", persistent=False, state=DesktopState.ASSIGNED,
                 power=Power.ON, assigned_user="clerk", assigned_at=T0, connected=True,
                 connected_since=T0, disconnected_at=None, last_input_at=T0)
    return replace(base, **changes)  # type: ignore[arg-type]


def warned(warned_s: float, **changes: object) -> Facts:
    return facts(warned_at=at(warned_s), warning_deadline=at(warned_s + 60), **changes)


CASES: list[tuple[str, Facts, IdlePolicy, float, Verdict, Action]] = [
    # -- in use ------------------------------------------------------------------------
    ("typing: nothing to do", facts(last_input_at=at(500)), POLICY, 600,
     Verdict.WAIT, Action.NOTHING),
    ("idle just under the limit", facts(), POLICY, 599.9, Verdict.WAIT, Action.NOTHING),
    ("idle at the limit: warned", facts(), POLICY, 600, Verdict.WARN, Action.NOTHING),
    ("reopened console counts as use", facts(connected_since=at(300)), POLICY, 600,
     Verdict.WAIT, Action.NOTHING),
    ("warned, countdown running", warned(600), POLICY, 659, Verdict.WAIT, Action.NOTHING),
    ("input just before the deadline withdraws the warning",
     warned(600, last_input_at=at(659.9)), POLICY, 660, Verdict.WITHDRAW, Action.NOTHING),
    ("warning ignored: idle action", warned(600), POLICY, 660, Verdict.ACT, Action.LOG_OFF),
    ("late worker still acts once the deadline passed", warned(600), POLICY, 5000,
     Verdict.ACT, Action.LOG_OFF),
    ("input before the warning does not withdraw it", warned(600, last_input_at=at(10)),
     POLICY, 660, Verdict.ACT, Action.LOG_OFF),
    ("idle rule off", facts(), replace(POLICY, idle_warn_after_s=None), 10**6,
     Verdict.WAIT, Action.NOTHING),
    ("idle action nothing", warned(600), replace(POLICY, idle_action=Action.NOTHING), 700,
     Verdict.WAIT, Action.NOTHING),
    # -- signals unavailable -------------------------------------------------------------
    ("no console report at all", facts(connected=None, last_input_at=None), POLICY, 10**6,
     Verdict.WAIT, Action.NOTHING),
    ("console input not readable: never idle", facts(input_tracked=False), POLICY, 10**6,
     Verdict.WAIT, Action.NOTHING),
    ("no time known", facts(last_input_at=None, assigned_at=None, connected_since=None),
     POLICY, 10**6, Verdict.WAIT, Action.NOTHING),
    # -- disconnected ----------------------------------------------------------------------
    ("closed tab, within the grace", facts(connected=False, disconnected_at=at(100)), POLICY,
     279, Verdict.WAIT, Action.NOTHING),
    ("closed tab, grace over: log off", facts(connected=False, disconnected_at=at(100)),
     POLICY, 280, Verdict.ACT, Action.LOG_OFF),
    ("never opened a console: grace from the claim",
     facts(connected=False, connected_since=None, last_input_at=None), POLICY, 180,
     Verdict.ACT, Action.LOG_OFF),
    ("grace off keeps it", facts(connected=False, disconnected_at=at(0)),
     replace(POLICY, disconnect_grace_s=None), 10**6, Verdict.WAIT, Action.NOTHING),
    ("a disconnect takes the warning down", warned(600, connected=False,
                                                   disconnected_at=at(630)), POLICY, 640,
     Verdict.WITHDRAW, Action.NOTHING),
    # -- not reclaimable ---------------------------------------------------------------------
    ("a spare", facts(state=DesktopState.READY, assigned_user=None), POLICY, 10**6,
     Verdict.WAIT, Action.NOTHING),
    ("being reverted (a reclaim in progress)", facts(state=DesktopState.RECLAIMING), POLICY,
     10**6, Verdict.WAIT, Action.NOTHING),
    ("already shut down", facts(persistent=True, power=Power.OFF, connected=False,
                                disconnected_at=at(0)), DEDICATED, 10**6,
     Verdict.WAIT, Action.NOTHING),
    # -- dedicated: never reverted -------------------------------------------------------------
    ("dedicated idle: shut down", warned(600, persistent=True), DEDICATED, 660,
     Verdict.ACT, Action.SHUT_DOWN),
    ("dedicated gone: suspended", facts(persistent=True, connected=False,
                                        disconnected_at=at(0)), DEDICATED, 180,
     Verdict.ACT, Action.SUSPEND),
    ("dedicated with a log-off action: left alone",
     facts(persistent=True, connected=False, disconnected_at=at(0)),
     replace(DEDICATED, logoff_action=Action.LOG_OFF), 10**6, Verdict.WAIT, Action.NOTHING),
    ("dedicated with a log-off idle action: left alone", warned(600, persistent=True),
     replace(DEDICATED, idle_action=Action.LOG_OFF), 10**6, Verdict.WAIT, Action.NOTHING),
    ("floating told to shut down: reverted instead", warned(600),
     replace(POLICY, idle_action=Action.SHUT_DOWN), 660, Verdict.ACT, Action.LOG_OFF),
    ("idle action disconnect", warned(600), replace(POLICY, idle_action=Action.DISCONNECT),
     660, Verdict.ACT, Action.DISCONNECT),
]


@pytest.mark.parametrize(("case", "desk", "policy", "now_s", "verdict", "action"), CASES,
                         ids=[c[0] for c in CASES])
def test_decide(case: str, desk: Facts, policy: IdlePolicy, now_s: float,
                verdict: Verdict, action: Action) -> None:
    decision = decide(desk, policy, at(now_s))
    assert (decision.verdict, decision.action) == (verdict, action), decision.reason
    assert decision.reason
    if verdict is Verdict.ACT:
        assert decision.cause in (Cause.IDLE, Cause.DISCONNECTED) and decision.since
    if desk.persistent:
        assert decision.action is not Action.LOG_OFF  # never reverted


def test_the_warning_gives_the_whole_countdown_even_when_late() -> None:
    late = decide(facts(), POLICY, at(900))
    assert late.verdict is Verdict.WARN and late.deadline == at(960)


def test_waiting_says_when_to_look_again() -> None:
    assert decide(facts(last_input_at=at(100)), POLICY, at(200)).recheck_at == at(700)
    gone = facts(connected=False, disconnected_at=at(50))
    assert decide(gone, POLICY, at(60)).recheck_at == at(230)


def test_reasons_say_why() -> None:
    idle: Decision = decide(warned(600), POLICY, at(660))
    assert idle.cause is Cause.IDLE and idle.since == T0 and "11 min" in idle.reason
    gone = decide(facts(connected=False, disconnected_at=at(60)), POLICY, at(300))
    assert gone.cause is Cause.DISCONNECTED and gone.since == at(60)


@pytest.mark.parametrize(("policy", "persistent", "message"), [
    (replace(POLICY, idle_action=Action.SHUT_DOWN), False, "floating"),
    (replace(POLICY, logoff_action=Action.SUSPEND), False, "floating"),
    (replace(DEDICATED, idle_action=Action.LOG_OFF), True, "dedicated"),
    (replace(POLICY, logoff_action=Action.DISCONNECT), False, "already closed"),
    (replace(POLICY, disconnect_grace_s=-1), False, "disconnect_grace_s"),
    (replace(POLICY, idle_countdown_s=-5), False, "idle_countdown_s"),
])
def test_policies_that_break_a_pool_kinds_promise_are_refused(
        policy: IdlePolicy, persistent: bool, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        policy.check(persistent=persistent)


# -- the calendar ------------------------------------------------------------------------

CAL = Calendar(timezone="Asia/Shanghai", opens=time(8, 30), closes=time(17, 30),
               holidays=frozenset({date(2026, 10, 1)}),  # Thursday, National Day
               makeup_days=frozenset({date(2026, 10, 10)}))  # Saturday, worked


def shanghai(y: int, m: int, d: int, hh: int, mm: int) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=UTC) - timedelta(hours=8)


@pytest.mark.parametrize(("when", "shift"), [
    (shanghai(2026, 11, 23, 8, 29), Shift.AFTER_HOURS),  # Monday, before opening
    (shanghai(2026, 11, 23, 8, 30), Shift.OFFICE),
    (shanghai(2026, 11, 23, 17, 29), Shift.OFFICE),
    (shanghai(2026, 11, 23, 17, 30), Shift.AFTER_HOURS),
    (shanghai(2026, 11, 22, 10, 0), Shift.OFF_DAY),  # Sunday
    (shanghai(2026, 10, 1, 10, 0), Shift.OFF_DAY),  # a holiday on a Thursday
    (shanghai(2026, 10, 10, 10, 0), Shift.OFFICE),  # a make-up Saturday
    (shanghai(2026, 10, 10, 20, 0), Shift.AFTER_HOURS),
])
def test_shift_in_the_offices_time_zone(when: datetime, shift: Shift) -> None:
    assert CAL.shift_at(when) is shift


def test_a_policy_round_trips_through_its_stored_form() -> None:
    policy = ReclaimPolicy(calendar=CAL, shifts={
        Shift.OFFICE: POLICY, Shift.AFTER_HOURS: replace(POLICY, disconnect_grace_s=None),
        Shift.OFF_DAY: replace(POLICY, idle_warn_after_s=60)})
    again = ReclaimPolicy.from_json(policy.to_json(), persistent=False)
    assert again == policy
    assert again.at(shanghai(2026, 10, 1, 10, 0)) == (Shift.OFF_DAY, policy.shifts[
        Shift.OFF_DAY])


def test_stored_policies_fill_in_defaults_and_name_bad_fields() -> None:
    partial = ReclaimPolicy.from_json({"shifts": {"office": {"idle_warn_after_s": 300}}},
                                      persistent=False)
    assert partial.shifts[Shift.OFFICE].idle_warn_after_s == 300
    assert partial.calendar == Calendar()
    assert ReclaimPolicy.from_json(None, persistent=True).shifts[
        Shift.OFFICE].logoff_action is Action.SHUT_DOWN
    bad_forms: list[tuple[dict[str, Any], str]] = [
        ({"calendar": {"timezone": "Mars/Base"}}, "timezone"),
        ({"calendar": {"opens": "9h"}}, "opens"),
        ({"calendar": {"opens": "18:00", "closes": "08:00"}}, "before"),
        ({"calendar": {"working_days": ["mon", "funday"]}}, "working_days"),
        ({"calendar": {"holidays": ["2026-13-01"]}}, "holidays"),
        ({"shifts": {"lunch": {}}}, "shift"),
        ({"shifts": {"office": {"idle_action": "explode"}}}, "idle_action"),
        ({"shifts": {"office": {"disconnect_grace_s": "soon"}}}, "disconnect_grace_s"),
        ({"shifts": {"office": {"idle_action": "shut_down"}}}, "floating"),
    ]
    for bad, field in bad_forms:
        with pytest.raises(PolicyError, match=field):
            ReclaimPolicy.from_json(bad, persistent=False)


# -- spare levels over the day -------------------------------------------------------------

SCHEDULE = SpareSchedule(levels=(
    SpareLevel(DayKind.WORKING, time(8, 45), 40), SpareLevel(DayKind.WORKING, time(12, 0), 20),
    SpareLevel(DayKind.WORKING, time(18, 0), 5), SpareLevel(DayKind.OFF, time(9, 0), 2)))


@pytest.mark.parametrize(("when", "level"), [
    (shanghai(2026, 11, 23, 8, 44), 3),  # Monday before the first level: the pool's own
    (shanghai(2026, 11, 23, 8, 45), 40),
    (shanghai(2026, 11, 23, 12, 30), 20),
    (shanghai(2026, 11, 23, 23, 0), 5),
    (shanghai(2026, 11, 22, 10, 0), 2),  # Sunday
    (shanghai(2026, 10, 1, 9, 0), 2),  # a holiday Thursday: a day off
    (shanghai(2026, 10, 10, 9, 0), 40),  # a make-up Saturday: a working day
])
def test_static_spare_levels_follow_the_calendar(when: datetime, level: int) -> None:
    got = spare_level(SCHEDULE, CAL, 3, when)
    assert got.min_ready == level, got.reason


def test_forecast_keeps_ready_the_most_arrivals_of_past_weeks() -> None:
    forecast = replace(SCHEDULE, mode=SpareMode.FORECAST, lead_s=1800, weeks=4)
    now = shanghai(2026, 11, 23, 8, 45)  # Monday
    claims: list[datetime] = []
    for weeks_back, arrivals in [(1, 12), (2, 15), (3, 14), (4, 9)]:
        start = now - timedelta(weeks=weeks_back)
        claims += [start + timedelta(seconds=60 * i) for i in range(arrivals)]
        claims.append(start + timedelta(minutes=31))  # after the lead: not counted
        claims.append(start - timedelta(minutes=1))  # before: not counted
    got = spare_level(forecast, CAL, 3, now, claims)
    assert got.min_ready == 15
    assert "08:45 and 09:15" in got.reason and "9, 14, 15, 12" in got.reason
    # fewer arrivals than the pool's own level: the pool's level holds
    assert spare_level(forecast, CAL, 20, now, claims).min_ready == 20


def test_forecast_skips_days_of_another_kind_and_falls_back_without_history() -> None:
    forecast = SpareSchedule(mode=SpareMode.FORECAST, weeks=2, levels=SCHEDULE.levels)
    thursday = shanghai(2026, 10, 8, 9, 0)  # a week after the National Day holiday
    claims = [thursday - timedelta(weeks=1) + timedelta(minutes=i) for i in range(30)]
    claims += [thursday - timedelta(weeks=2) + timedelta(minutes=i) for i in range(7)]
    got = spare_level(forecast, CAL, 1, thursday, claims)
    assert got.min_ready == 7 and "past 1 Thursdays" in got.reason  # the holiday left out
    quiet = spare_level(forecast, CAL, 1, thursday, [])  # past Thursdays with no one
    assert quiet.min_ready == 1 and "min_ready (1) is more" in quiet.reason
    lonely = SpareSchedule(mode=SpareMode.FORECAST, weeks=1, levels=SCHEDULE.levels)
    fallback = spare_level(lonely, CAL, 1, shanghai(2026, 10, 8, 9, 0), claims)
    assert fallback.min_ready == 40 and "no past Thursdays" in fallback.reason


def test_spare_schedules_round_trip_and_refuse_bad_values() -> None:
    again = SpareSchedule.from_json(SCHEDULE.to_json(), max_size=50)
    assert again == SCHEDULE
    bad_forms: list[tuple[dict[str, Any], str]] = [
                       ({"mode": "magic"}, "mode"),
                       ({"levels": [{"at": "8h", "min_ready": 3}]}, "spare level"),
                       ({"levels": [{"at": "08:00", "min_ready": 99}]}, "max_size"),
                       ({"lead_s": 5}, "lead_s")]
    for bad, field in bad_forms:
        with pytest.raises(PolicyError, match=field):
            SpareSchedule.from_json(bad, max_size=50)
