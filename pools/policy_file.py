"""A pool's idle policy and spare levels as an admin writes them: one TOML (or JSON) file.

    [calendar]                      # when the street office is open
    timezone = "Asia/Shanghai"
    working_days = ["mon", "tue", "wed", "thu", "fri"]
    opens = "08:30"
    closes = "17:30"
    holidays = ["2027-02-11"]       # closed although a working day
    makeup_days = ["2027-02-07"]    # open although a weekend (调休)

    [shifts.office]                 # also shifts.after_hours, shifts.off_day
    disconnect_grace_s = 180        # a closed console is kept this long for the clerk
    idle_warn_after_s = 1800        # no input this long: the warning with a countdown
    idle_countdown_s = 120
    idle_action = "disconnect"      # disconnect | log_off (floating) | shut_down | suspend
    logoff_action = "log_off"       # after the disconnect grace

    [spares]                        # spare levels over the day
    mode = "static"                 # or "forecast": from past logins at that time of week
    levels = [{ days = "working", at = "08:45", min_ready = 40 }]

Parts left out keep the defaults (pools.shifts, pools.spares). Pure apart from reading
the file; raises PolicyError naming what is wrong.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, time
from pathlib import Path
from typing import Any

from pools.reclaim import PolicyError
from pools.shifts import ReclaimPolicy
from pools.spares import SpareSchedule

KNOWN = frozenset({"calendar", "shifts", "spares"})


@dataclass(frozen=True)
class PoolPolicy:
    reclaim: ReclaimPolicy
    spares: SpareSchedule | None  # None: the pool's min_ready all day

    def to_json(self) -> dict[str, Any]:
        out = self.reclaim.to_json()
        if self.spares is not None:
            out["spares"] = self.spares.to_json()
        return out


def read_policy_file(path: Path, *, persistent: bool, max_size: int) -> PoolPolicy:
    """The file's policy, checked against the pool's kind and size."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PolicyError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, TOMLDecodeError
        raise PolicyError(f"{path.name}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: "
                          f"{e}") from e
    return parse_policy(data, persistent=persistent, max_size=max_size)


def parse_policy(data: object, *, persistent: bool, max_size: int) -> PoolPolicy:
    if not isinstance(data, Mapping):
        raise PolicyError("the policy must be a table of calendar, shifts and spares")
    unknown = sorted(set(data) - KNOWN)
    if unknown:
        raise PolicyError(f"unknown part(s) {', '.join(unknown)}: expected calendar, shifts, "
                          "spares")
    plain = _plain(data)
    for part in ("calendar", "shifts", "spares"):
        if part in plain and not isinstance(plain[part], dict):
            raise PolicyError(f"{part} must be a table ([{part}]), not {plain[part]!r}")
    try:
        reclaim = ReclaimPolicy.from_json({k: plain[k] for k in ("calendar", "shifts")
                                           if k in plain}, persistent=persistent)
        spares = None
        if "spares" in plain:
            spares = SpareSchedule.from_json(plain["spares"], max_size)
            spares.check(max_size)
    except PolicyError:
        raise
    except (ValueError, TypeError, AttributeError, OverflowError) as e:  # a shape we missed
        raise PolicyError(f"malformed policy: {e}") from e
    return PoolPolicy(reclaim, spares)


def _plain(value: Any) -> Any:
    """TOML's times and dates as the strings the stored form uses."""
    if isinstance(value, time):
        return value.strftime("%H:%M")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
