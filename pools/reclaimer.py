"""Carries out the idle policy (pools.reclaim) on the desktops in use.

One round reads every assigned desktop with its signals and its pool's policy for the
current shift, asks `decide` what to do, and applies each decision as a compare-and-set
on exactly what it read: the row must still have the same clerk, console times, input
time and warning. A clerk who reconnects or types in between changes one of those, and
the reclaim is dropped (the next round decides again). A reconnect does the mirror
image: the console opens only if the desktop is still assigned to that clerk.

Effects, all in the transaction of the compare-and-set:
* warn / withdraw: the warning's time and deadline on the desktop row (the desktop page
  reads them and shows the countdown);
* disconnect: `kicked_at` (the broker holding the console closes it), the grace starts;
* log off (floating): `reclaiming` and a revert job, as a clerk's own log-off;
* shut down / suspend (dedicated): `power` set and a power job; the desktop stays the
  clerk's, with its disk; connecting again starts it;
* every action: a `reclaims` record with its reason, shown to admins and to the clerk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pools.jobs.queue import JobKind, enqueue
from pools.reclaim import Action, Decision, Facts, Power, Verdict, decide
from pools.shifts import ReclaimPolicy, Shift
from vdi import desktops
from vdi.domain import DesktopState, PoolKind, utc_now
from vdi.models import DesktopRow, PoolRow, ReclaimRow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    desktop_id: str
    decision: Decision
    applied: bool  # False: the desktop changed since it was read (the clerk won)


def console_facts(row: DesktopRow, now: datetime, stale: timedelta) -> tuple[
        bool, datetime | None, datetime | None]:
    """(connected, connected_since, disconnected_at) from the console columns. A
    console whose broker stopped reporting (it died) counts as closed when it last
    reported."""
    if row.console_seen_at is not None:
        if now - row.console_seen_at <= stale:
            return True, row.console_since, row.last_disconnect_at
        return False, None, row.console_seen_at
    return False, None, row.last_disconnect_at


class Reclaimer:
    def __init__(self, sessions: sessionmaker[Session], *,
                 clock: Callable[[], datetime] = utc_now, signal_lag_s: float = 10.0,
                 console_stale_s: float = 60.0) -> None:
        """signal_lag_s: how late input may reach the database (the brokers write it in
        batches): an action waits that long past its deadline. console_stale_s: a console
        no broker has reported on for this long is taken as closed."""
        self._sessions = sessions
        self._clock = clock
        self._lag = timedelta(seconds=signal_lag_s)
        self._stale = timedelta(seconds=console_stale_s)

    def run_once(self) -> list[Outcome]:
        """One round over the desktops in use. Blocks on the database."""
        now = self._clock()
        with self._sessions() as s:
            pools = {p.id: p for p in s.scalars(select(PoolRow))}
            rows = list(s.scalars(select(DesktopRow).where(
                DesktopRow.state == DesktopState.ASSIGNED.value)))
            for row in rows:
                s.expunge(row)
        policies: dict[str, ReclaimPolicy] = {}
        outcomes = []
        for row in rows:
            prow = pools.get(row.pool_id)
            if prow is None:
                continue
            persistent = prow.kind == PoolKind.DEDICATED.value
            if prow.id not in policies:
                try:
                    policies[prow.id] = ReclaimPolicy.from_json(prow.reclaim_policy,
                                                                persistent=persistent)
                except ValueError as e:
                    # a bad stored policy (stored by hand, or before a check existed):
                    # the pool runs under the defaults for its kind rather than under
                    # none at all, and the admin is told in the log each round
                    log.error("pool %s: idle policy unusable (%s); the defaults apply",
                              prow.id, e)
                    policies[prow.id] = ReclaimPolicy.default(persistent=persistent)
            shift, policy = policies[prow.id].at(now)
            connected, since, gone = console_facts(row, now, self._stale)
            facts = Facts(desktop_id=row.id, persistent=persistent,
                          state=DesktopState(row.state), power=Power(row.power),
                          assigned_user=row.assigned_user, assigned_at=row.assigned_at,
                          connected=connected, connected_since=since, disconnected_at=gone,
                          last_input_at=row.last_input_at, warned_at=row.warned_at,
                          warning_deadline=row.warning_deadline)
            # input may reach the database up to the lag late: judge as of then
            try:
                decision = decide(facts, policy, now - self._lag)
            except (ValueError, TypeError, OverflowError) as e:  # one pool's bad values
                log.error("pool %s: idle policy unusable for desktop %s: %s", prow.id,
                          row.id, e)  # must not stop the round for the others
                continue
            if decision.verdict is Verdict.WAIT or (
                    decision.verdict is Verdict.ACT and not decision.acts):
                continue
            applied = self._apply(row, persistent, shift, decision, now)
            outcomes.append(Outcome(row.id, decision, applied))
            if applied and decision.verdict is Verdict.ACT:
                log.info("desktop %s (%s): %s: %s", row.id, row.assigned_user,
                         decision.action.value, decision.reason)
        return outcomes

    def _apply(self, row: DesktopRow, persistent: bool, shift: Shift, decision: Decision,
               now: datetime) -> bool:
        read = desktops.AsRead.of(row)
        with self._sessions.begin() as s:
            if decision.verdict is Verdict.WARN:
                done = desktops.warn_idle(s, read, deadline=decision.deadline
                                          and decision.deadline + self._lag, now=now)
            elif decision.verdict is Verdict.WITHDRAW:
                done = desktops.withdraw_warning(s, read, now)
            elif decision.action is Action.DISCONNECT:
                # the grace starts now, whatever a broker reports of the closed console
                done = desktops.kick_console(s, read, now)
            elif decision.action is Action.LOG_OFF and not persistent:
                done = desktops.log_off_idle(s, read, now)
            elif decision.action in (Action.SHUT_DOWN, Action.SUSPEND) and persistent:
                done = desktops.power_down(s, read, Power.OFF if decision.action is
                                           Action.SHUT_DOWN else Power.SUSPENDED, now)
            else:  # decide() never asks this; refuse rather than guess
                log.error("desktop %s: %s is not for a %s desktop", row.id,
                          decision.action.value, "dedicated" if persistent else "floating")
                return False
            if not done:
                return False
            if decision.verdict is Verdict.ACT:
                if decision.action is Action.LOG_OFF:
                    enqueue(s, JobKind.REVERT, row.id, now)
                elif decision.action is Action.SHUT_DOWN:
                    enqueue(s, JobKind.SHUT_DOWN, row.id, now)
                elif decision.action is Action.SUSPEND:
                    enqueue(s, JobKind.SUSPEND, row.id, now)
                assert row.assigned_user is not None and decision.cause is not None
                s.add(ReclaimRow(at=now, desktop_id=row.id, pool_id=row.pool_id,
                                 username=row.assigned_user, action=decision.action.value,
                                 cause=decision.cause.value, since=decision.since or now,
                                 shift=shift.value, reason=decision.reason[:2000]))
        return True
