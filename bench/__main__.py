"""`python -m bench [--quick] [--report-only] [SECTION ...]`: run benchmark sections, store
their results, print a summary and render docs/benchmarks.md.

Each section is the module `bench/<name>.py` with `run(quick: bool) -> bench.common.Section`.
It runs in a child process of its own (`python -m bench --child NAME`), so a section that
crashes, hangs or leaks threads costs only its own entry: the runner records it as
missing, failed or timed out, and still runs and reports the others. On a timeout the
child first gets SIGINT (its `finally` blocks remove what it started), then SIGKILL.

Full runs store into bench/results/latest.json (the published figures) and render
docs/benchmarks.md with plots in docs/bench/. Quick runs (`--quick`, small sizes, a smoke
test) go to bench/results/quick.json and bench/results/quick/ instead, so they never
overwrite the published figures. Exit status: 0 if every section ran, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from bench.common import Section, machine
from bench.report import (
    DOC,
    LATEST,
    PLOTS_DIR,
    REPO,
    RESULTS_DIR,
    STATUS_TEXT,
    SectionEntry,
    fmt_value,
    load,
    merge,
    render,
    save,
    section_from_json,
)

# The CPU-bound tunnel figures first, on a machine where no guest has booted yet; then the
# browser section (it boots its own spares and removes them); then provisioning (boots
# and removes its own guests); the login storm; the simulated office day (no guests) last.
DEFAULT_ORDER = ("tunnel", "first_pixel", "provision", "golden", "login_storm", "reclaim")
# Wall-time limits per section (seconds). Full: about 37 minutes in all (golden: 30 TCG
# boots one at a time and three 2 GiB imports; provision: two
# pairs of 25 + 25 TCG guests, 4-5 minutes each with their removal on 2 cores: the second
# half's calls run beside the first half's booting guests; the large image's pairs if
# time is left; the simulated day: three scenarios of about 1.5 minutes).
FULL_TIMEOUT_S = {"tunnel": 270.0, "first_pixel": 240.0, "provision": 680.0, "golden": 600.0,
                  "login_storm": 300.0, "reclaim": 480.0}
QUICK_TIMEOUT_S = 150.0
DEFAULT_FULL_TIMEOUT_S = 240.0
KILL_GRACE_S = 60.0  # after SIGINT, time for a section to remove what it started
EXIT_MISSING = 3

QUICK_JSON = RESULTS_DIR / "quick.json"
QUICK_DOC = RESULTS_DIR / "quick" / "benchmarks.md"
QUICK_PLOTS = RESULTS_DIR / "quick" / "bench"


@dataclass(frozen=True)
class Outputs:
    results: Path
    doc: Path
    plots: Path


def outputs(quick: bool) -> Outputs:
    if quick:
        return Outputs(QUICK_JSON, QUICK_DOC, QUICK_PLOTS)
    return Outputs(LATEST, DOC, PLOTS_DIR)


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# -- the child: one section in its own process ----------------------------------------------


def run_child(name: str, quick: bool, out: Path) -> int:
    """Import bench.<name>, run it, write its Section as JSON to `out` (errors to
    out.err). Exit 0, EXIT_MISSING if the module does not exist, 1 if it failed."""
    err = out.with_suffix(".err")
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"bench.{name}":
            err.write_text(f"no module bench/{name}.py", encoding="utf-8")
            return EXIT_MISSING
        err.write_text(traceback.format_exc(), encoding="utf-8")
        return 1
    except Exception:
        err.write_text(traceback.format_exc(), encoding="utf-8")
        return 1
    try:
        run = getattr(module, "run", None)
        if not callable(run):
            raise TypeError(f"bench/{name}.py has no function run(quick: bool) -> Section")
        section = run(quick)
        if not isinstance(section, Section):
            raise TypeError(f"bench.{name}.run returned {type(section).__name__}, "
                            "not bench.common.Section")
        if section.name != name:
            print(f"bench: section module {name} returned name {section.name!r}; "
                  f"stored as {name!r}", file=sys.stderr)
            section.name = name
        from bench.report import jsonable

        out.write_text(json.dumps(section.to_json(), ensure_ascii=False, default=jsonable),
                       encoding="utf-8")
        return 0
    except BaseException:  # KeyboardInterrupt on a timeout too: record what happened
        err.write_text(traceback.format_exc(), encoding="utf-8")
        return 1


# -- the parent ---------------------------------------------------------------------------


def cpu_busy_share(interval_s: float = 1.0) -> float:
    """Share (0..1) of all cores busy over `interval_s`, from /proc/stat."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(interval_s)
    total1, idle1 = sample()
    total = total1 - total0
    return 0.0 if total <= 0 else 1 - (idle1 - idle0) / total


def settle(max_s: float = 30.0, busy_below: float = 0.3) -> float:
    """Wait until the machine is mostly idle (what the previous section started has
    stopped); returns the seconds waited."""
    start = time.monotonic()
    calm = 0
    while time.monotonic() - start < max_s:
        try:
            busy = cpu_busy_share()
        except OSError:
            break
        calm = calm + 1 if busy < busy_below else 0
        if calm >= 2:
            break
    return time.monotonic() - start


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to the section (it cleans up), then SIGKILL to its whole process group."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(KILL_GRACE_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def _reap_leftovers(pgid: int) -> bool:
    """Kill what is left of a finished section's process group (it would skew the next
    section's figures); True if anything was."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    return True


def run_section(name: str, quick: bool, timeout_s: float) -> SectionEntry:
    entry = SectionEntry(name=name, status="failed", date=now_iso(), quick=quick,
                         seconds=0.0, machine=machine())
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        entry.status = "missing"
        entry.error = f"{name!r} is not a section name (a module bench/<name>.py)"
        return entry
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        out = Path(tmp) / "section.json"
        cmd = [sys.executable, "-m", "bench", "--child", name, "--out", str(out)]
        if quick:
            cmd.append("--quick")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            entry.seconds = round(time.monotonic() - start, 1)
            entry.status = "timeout"
            err = out.with_suffix(".err")
            detail = err.read_text(encoding="utf-8") if err.exists() else ""
            entry.error = (f"{detail}\nsection {name} did not finish within {timeout_s:.0f} s "
                           "and was stopped")
            return entry
        except KeyboardInterrupt:
            _stop(proc)
            raise
        entry.seconds = round(time.monotonic() - start, 1)
        if _reap_leftovers(proc.pid):
            print(f"bench: section {name} left processes behind; killed them", flush=True)
        err = out.with_suffix(".err")
        if rc == 0 and out.exists():
            entry.status = "ok"
            entry.result = section_from_json(json.loads(out.read_text(encoding="utf-8")))
            if not entry.result.seconds:
                entry.result.seconds = entry.seconds
            return entry
        entry.status = "missing" if rc == EXIT_MISSING else "failed"
        entry.error = (err.read_text(encoding="utf-8") if err.exists()
                       else f"section process exited with status {rc} and no result")
        return entry


def summary_lines(entry: SectionEntry) -> list[str]:
    status = STATUS_TEXT.get(entry.status, entry.status)
    head = f"{entry.name:<12} {status:<9} {entry.seconds:6.0f} s"
    lines = [head]
    if entry.status != "ok":
        last = entry.error.strip().splitlines()[-1] if entry.error.strip() else "no detail"
        lines.append(f"    {last}")
    s = entry.result
    if s is not None and entry.status == "ok":
        for t in s.targets:
            mark = "met   " if t.met else "MISSED"
            lines.append(f"    [{mark}] {t.name}: {t.value} (goal {t.goal})")
        if not s.targets and s.figures:
            shown = list(s.figures.items())[:4]
            lines.append("    " + ", ".join(f"{k}={fmt_value(v)}" for k, v in shown))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run the benchmarks and render docs/benchmarks.md.")
    parser.add_argument("sections", nargs="*", metavar="SECTION",
                        help=f"sections to run (default: {' '.join(DEFAULT_ORDER)})")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, a smoke run (stored apart from the published "
                             "figures, in bench/results/quick*)")
    parser.add_argument("--report-only", action="store_true",
                        help="only re-render the document from the stored results")
    parser.add_argument("--timeout", type=float, default=None,
                        help="wall-time limit per section in seconds")
    parser.add_argument("--no-settle", action="store_true",
                        help="do not wait for an idle machine between sections")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        if args.out is None:
            parser.error("--child needs --out")
        return run_child(args.child, args.quick, args.out)

    where = outputs(args.quick)
    rel = where.results.relative_to(REPO)
    if args.report_only:
        if not where.results.exists():
            print(f"bench: no stored results in {rel}; run python -m bench first",
                  file=sys.stderr)
            return 2
        results = load(where.results)
        written = render(results, where.doc, where.plots, source=str(rel))
        print(f"bench: rendered {where.doc.relative_to(REPO)} and {len(written) - 1} plot(s)")
        return 0

    names = list(dict.fromkeys(args.sections or DEFAULT_ORDER))
    results = load(where.results)
    failures = 0
    total_start = time.monotonic()
    for i, name in enumerate(names):
        if i and not args.no_settle:
            waited = settle()
            if waited > 5:
                print(f"bench: waited {waited:.0f} s for the machine to settle", flush=True)
        timeout = args.timeout or (QUICK_TIMEOUT_S if args.quick
                                   else FULL_TIMEOUT_S.get(name, DEFAULT_FULL_TIMEOUT_S))
        print(f"bench: ---- {name} ({'quick' if args.quick else 'full'}, "
              f"limit {timeout:.0f} s) ----", flush=True)
        entry = run_section(name, args.quick, timeout)
        failures += entry.status != "ok"
        print("\n".join(summary_lines(entry)), flush=True)
        if entry.status == "missing" and name not in DEFAULT_ORDER:
            continue  # a mistyped name is reported, not stored
        merge(results, entry)
        results.updated = now_iso()
        results.machine = machine()
        results.order = list(dict.fromkeys([*DEFAULT_ORDER, *results.order, name]))
        save(results, where.results)  # after each section: a later crash keeps this one

    written = render(results, where.doc, where.plots, source=str(rel))
    print(f"\nbench: {len(names)} section(s) in {time.monotonic() - total_start:.0f} s, "
          f"{failures} not ok")
    for name in names:
        if name in results.sections:
            print("\n".join(summary_lines(results.sections[name])))
    print(f"bench: results in {rel}; report {where.doc.relative_to(REPO)} "
          f"with {len(written) - 1} plot(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
