"""The idle policy core: what to do with one assigned desktop now. Pure, no I/O.

`decide(facts, policy, now)` looks at one desktop (its state, power and who holds it),
the signals the broker has of its use (is a console open, since when is it closed, when
was the last real keyboard or mouse input) and the pool's policy for the shift `now`
falls in, and returns one `Decision`. The worker carries decisions out, each as a
compare-and-set on the facts it was made from: a clerk who reconnects or types between
the decision and its execution wins, and the decision is dropped.

The rules, in order:
* only a desktop in use (`assigned`, powered on) is ever reclaimed;
* no signal, no action: without a console report (`connected is None`) nothing is done;
  without input tracking on the open console (a client whose input the broker cannot
  read) the idle rules do not apply, only the disconnect grace;
* a closed console: after `disconnect_grace_s` (the clerk's reconnect window for a
  network blip or a closed tab) the pool's log-off action runs;
* an open console without input for `idle_warn_after_s`: a warning with a countdown of
  `idle_countdown_s`; input after the warning withdraws it; when the countdown ends
  without input, the idle action runs;
* dedicated desktops are never reverted or deleted: their actions are only disconnect,
  shut down and suspend (or leaving them alone).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from vdi.domain import DesktopState, Power

__all__ = ["Action", "Cause", "Decision", "Facts", "IdlePolicy", "PolicyError", "Power",
           "Verdict", "decide"]


class Action(enum.StrEnum):
    """What may be done to an idle or abandoned desktop."""

    NOTHING = "nothing"  # leave it as it is (still counted, still the clerk's)
    DISCONNECT = "disconnect"  # close its consoles; it stays the clerk's (grace applies)
    LOG_OFF = "log_off"  # end the clerk's use: floating = revert to the pool
    SHUT_DOWN = "shut_down"  # dedicated: power off (the disk is kept)
    SUSPEND = "suspend"  # dedicated: memory saved to disk, host memory freed


# what each pool kind may be told to do (a floating desktop is reverted, never kept off;
# a dedicated one is never reverted)
FLOATING_ACTIONS = (Action.NOTHING, Action.DISCONNECT, Action.LOG_OFF)
DEDICATED_ACTIONS = (Action.NOTHING, Action.DISCONNECT, Action.SHUT_DOWN, Action.SUSPEND)


class PolicyError(ValueError):
    """A policy value is invalid; the message names the field."""


@dataclass(frozen=True)
class IdlePolicy:
    """The reclaim settings of one pool for one shift. None switches a rule off."""

    disconnect_grace_s: int | None = 180
    idle_warn_after_s: int | None = 1800
    idle_countdown_s: int = 120
    idle_action: Action = Action.DISCONNECT
    logoff_action: Action = Action.LOG_OFF  # when the grace after a disconnect runs out

    def check(self, *, persistent: bool) -> None:
        """Raises PolicyError for values that make no sense or break a pool kind's
        promise (a dedicated desktop is never reverted)."""
        for name in ("disconnect_grace_s", "idle_warn_after_s"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise PolicyError(f"{name} must be 0 or more seconds (or off)")
        if self.idle_countdown_s < 0:
            raise PolicyError("idle_countdown_s must be 0 or more seconds")
        allowed = DEDICATED_ACTIONS if persistent else FLOATING_ACTIONS
        kind = "dedicated" if persistent else "floating"
        for name in ("idle_action", "logoff_action"):
            action = getattr(self, name)
            if action not in allowed:
                raise PolicyError(f"{name}: a {kind} pool's desktops can only be "
                                  f"{', '.join(a.value for a in allowed)}, not {action.value}")
        if self.logoff_action is Action.DISCONNECT:
            raise PolicyError("logoff_action: the console is already closed; choose "
                              "log_off, shut_down, suspend or nothing")


@dataclass(frozen=True)
class Facts:
    """One desktop as the database has it, with the broker's signals of its use."""

    desktop_id: str
    persistent: bool
    state: DesktopState
    power: Power
    assigned_user: str | None
    assigned_at: datetime | None
    connected: bool | None  # a console open now; None: no broker reports on it
    connected_since: datetime | None  # when the open console opened
    disconnected_at: datetime | None  # when its last console closed
    last_input_at: datetime | None  # the last keyboard or mouse input seen
    input_tracked: bool = True  # the open console's input is read by the broker
    warned_at: datetime | None = None  # the idle warning being shown, if any
    warning_deadline: datetime | None = None


class Cause(enum.StrEnum):
    """Why a desktop was taken back (the clerk is told this, in their language)."""

    IDLE = "idle"  # no keyboard or mouse input
    DISCONNECTED = "disconnected"  # the console stayed closed past the grace


class Verdict(enum.StrEnum):
    WAIT = "wait"  # nothing now; look again at `recheck_at`
    WARN = "warn"  # show the idle warning, ending at `deadline`
    WITHDRAW = "withdraw"  # the clerk is back: take the warning down
    ACT = "act"  # carry out `action`


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str  # for the audit and the admin (English, times in UTC)
    action: Action = Action.NOTHING
    cause: Cause | None = None  # ACT: what the clerk is told
    since: datetime | None = None  # ACT: idle or disconnected since then
    deadline: datetime | None = None  # WARN: when the idle action runs
    recheck_at: datetime | None = None  # WAIT: the earliest moment this can change

    @property
    def acts(self) -> bool:
        return self.verdict is Verdict.ACT and self.action is not Action.NOTHING


def wait(reason: str, recheck_at: datetime | None = None) -> Decision:
    return Decision(Verdict.WAIT, reason, recheck_at=recheck_at)


def decide(facts: Facts, policy: IdlePolicy, now: datetime) -> Decision:
    """The one thing to do about this desktop now (see the module's rules)."""
    if facts.state is not DesktopState.ASSIGNED or facts.assigned_user is None:
        return wait(f"not in use ({facts.state.value})")
    if facts.power is not Power.ON:
        return wait(f"powered {facts.power.value}")
    if facts.connected is None:
        return wait("no signal: no broker reports on its console")
    if not facts.connected:
        if facts.warned_at is not None:
            return Decision(Verdict.WITHDRAW, "console closed: the disconnect grace applies")
        return _after_disconnect(facts, policy, now)
    return _while_connected(facts, policy, now)


def _after_disconnect(facts: Facts, policy: IdlePolicy, now: datetime) -> Decision:
    # the later of the two: a console time from before the clerk got it is not theirs
    times = [t for t in (facts.disconnected_at, facts.assigned_at) if t is not None]
    gone_since = max(times) if times else None
    if gone_since is None:
        return wait("no signal: no time of disconnect")
    if policy.disconnect_grace_s is None:
        return wait("disconnected; the policy keeps it without limit")
    deadline = gone_since + timedelta(seconds=policy.disconnect_grace_s)
    if now < deadline:
        return wait(f"disconnected at {_hm(gone_since)}; kept for the clerk until "
                    f"{_hm(deadline)}", deadline)
    action = _for_kind(policy.logoff_action, facts.persistent)
    if action is Action.NOTHING:
        return wait("disconnected; the policy leaves it as it is")
    minutes = _minutes(now - gone_since)
    return Decision(Verdict.ACT, f"disconnected for {minutes} min (since "
                    f"{_hm(gone_since)}), grace {policy.disconnect_grace_s} s", action,
                    cause=Cause.DISCONNECTED, since=gone_since)


def _while_connected(facts: Facts, policy: IdlePolicy, now: datetime) -> Decision:
    if not facts.input_tracked:
        return wait("connected; its input cannot be read, so it is never idle")
    if policy.idle_warn_after_s is None:
        return wait("connected; the policy has no idle limit")
    # in use since the last input, or since the clerk got it or opened this console
    uses = [t for t in (facts.last_input_at, facts.assigned_at, facts.connected_since)
            if t is not None]
    if not uses:
        return wait("no signal: no time of last use")
    active = max(uses)
    if facts.warned_at is not None:
        # input after the warning, or input (reported late) that means the warning
        # should not have come yet
        if active > facts.warned_at or now < active + timedelta(
                seconds=policy.idle_warn_after_s):
            return Decision(Verdict.WITHDRAW, f"input at {_hm(active)}: not idle")
        deadline = facts.warning_deadline or facts.warned_at
        if now < deadline:
            return wait(f"warned at {_hm(facts.warned_at)}; acting at {_hm(deadline)}",
                        deadline)
        action = _for_kind(policy.idle_action, facts.persistent)
        if action is Action.NOTHING:
            return wait("idle; the policy leaves it as it is")
        return Decision(Verdict.ACT, f"no keyboard or mouse input for "
                        f"{_minutes(now - active)} min (since {_hm(active)}); warned at "
                        f"{_hm(facts.warned_at)}", action, cause=Cause.IDLE, since=active)
    warn_at = active + timedelta(seconds=policy.idle_warn_after_s)
    if now < warn_at:
        return wait(f"last input at {_hm(active)}", warn_at)
    # the clerk gets the whole countdown even when this runs late
    return Decision(Verdict.WARN, f"no keyboard or mouse input since {_hm(active)}",
                    deadline=now + timedelta(seconds=policy.idle_countdown_s))


def _for_kind(action: Action, persistent: bool) -> Action:
    """A dedicated desktop is never reverted: a log-off leaves it as it is. A floating
    one is never kept powered off: shut down or suspend reverts it instead."""
    if persistent and action is Action.LOG_OFF:
        return Action.NOTHING
    if not persistent and action in (Action.SHUT_DOWN, Action.SUSPEND):
        return Action.LOG_OFF
    return action


def _hm(t: datetime) -> str:
    return t.strftime("%H:%M:%S UTC")


def _minutes(d: timedelta) -> int:
    return int(d.total_seconds() // 60)
