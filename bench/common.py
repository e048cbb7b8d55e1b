"""What every benchmark section returns, so one runner can print, store and plot it.

A section is a function `run(quick: bool) -> Section` in its own module. It starts the
real parts it needs itself, measures, stops them, and returns tables, plots, headline
figures and the targets it was measured against. `quick=True` shrinks every size so the
whole section finishes in seconds (for a smoke run); the published figures come from
`quick=False`.
"""

from __future__ import annotations

import platform
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""


@dataclass
class Plot:
    """A bar chart (categories on x) or a line chart (numeric x) of one or more series."""

    filename: str  # e.g. "tunnel-throughput.png", written under docs/bench/
    title: str
    xlabel: str
    ylabel: str
    series: dict[str, list[tuple[Any, float]]]
    kind: str = "bar"  # "bar" | "line"


@dataclass
class Target:
    name: str
    goal: str  # e.g. ">= 1.5x websockify"
    value: str  # e.g. "2.1x"
    met: bool


@dataclass
class Section:
    name: str
    title: str
    summary: str
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation; values need not be sorted."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary_ms(values_s: list[float]) -> dict[str, float]:
    """p50/p95/p99/mean in milliseconds of durations given in seconds."""
    return {"p50_ms": round(percentile(values_s, 50) * 1000, 2),
            "p95_ms": round(percentile(values_s, 95) * 1000, 2),
            "p99_ms": round(percentile(values_s, 99) * 1000, 2),
            "mean_ms": round(statistics.fmean(values_s) * 1000, 2)}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import os

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            mem_gib = int(f.readline().split()[1]) / 1024 / 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1),
            "python": platform.python_version(), "os": platform.platform()}
