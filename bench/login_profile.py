"""Where the broker's time goes during a login burst: py-spy on the broker process.

    python -m bench.login_profile [sqlite|postgresql] [--clerks N] [--all-threads]

Seeds a database, starts slapd and the broker as the login storm does, warms it up, then
samples the broker with `py-spy record --format raw` (by default only the thread that
holds the GIL: on two cores a Python broker is bound by the GIL) while N clerks sign in
at once. Prints the share of samples per part of the stack (directory, database, HTTP,
...) and the hottest functions, and keeps the raw stacks for a flame graph.
Not part of `make bench`: a tool for the "profile, fix, measure again" loop.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.login_ldif import clerk_name, write_clerks_ldif
from bench.login_storm import (
    WARMUP_CLERKS,
    BrokerProcess,
    _storm,
    broker_env,
    check_and_release,
    database,
    seed,
)
from harness.ldap_server import SlapdServer, free_loopback_port

# (label, substrings of a frame's file that put a sample there); first match wins,
# looking from the innermost frame outwards.
PARTS = (
    ("LDAP (ldap3, pyasn1)", ("ldap3/", "pyasn1/")),
    ("SQLite driver", ("sqlite3/",)),
    ("PostgreSQL driver", ("psycopg/", "psycopg_binary/", "psycopg_pool/")),
    ("SQLAlchemy", ("sqlalchemy/",)),
    ("HTTP (uvicorn, starlette, httptools)", ("uvicorn/", "starlette/", "httptools/", "h11/")),
    ("JSON", ("json/",)),
    ("asyncio / threads", ("asyncio/", "concurrent/", "threading.py", "queue.py")),
    ("broker code", ("broker/", "web/", "vdi/", "pools/")),
)


def _frames(stack: str) -> list[str]:
    return stack.split(";")


def summarize(raw: Path, top: int = 25) -> str:
    """Shares per part (innermost frame that belongs to one) and the hottest functions
    (self and inclusive), from py-spy's raw (collapsed) output."""
    parts: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        n = int(count_text)
        total += n
        frames = _frames(stack)
        part = "other"
        for frame in reversed(frames):
            hit = next((label for label, keys in PARTS if any(k in frame for k in keys)), None)
            if hit:
                part = hit
                break
        parts[part] += n
        self_time[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "no samples"
    out = [f"{total} samples"]
    out += [f"  {100 * n / total:5.1f} %  {label}" for label, n in parts.most_common()]
    out.append("hottest (self):")
    out += [f"  {100 * n / total:5.1f} %  {f}" for f, n in self_time.most_common(top)]
    out.append("hottest (inclusive, broker and library entry points):")
    out += [f"  {100 * n / total:5.1f} %  {f}" for f, n in inclusive.most_common(top * 2)
            if "asyncio" not in f and "threading" not in f and "concurrent" not in f][:top]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("database", nargs="?", default="sqlite",
                        choices=("sqlite", "postgresql"))
    parser.add_argument("--clerks", type=int, default=500)
    parser.add_argument("--all-threads", action="store_true",
                        help="sample every running thread, not only the GIL holder")
    parser.add_argument("--out", type=Path, default=Path("var/bench/login-profile.txt"))
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    work = Path(tempfile.mkdtemp(prefix="vdi-login-profile-"))
    try:
        spares = args.clerks + WARMUP_CLERKS
        users = [clerk_name(n) for n in range(1, args.clerks + 1)]
        warm = [clerk_name(n) for n in range(args.clerks + 1, spares + 1)]
        ldif = write_clerks_ldif(work / "clerks.ldif", spares)
        with SlapdServer(ldif=ldif) as slapd, database(args.database, work) as (url, _pid):
            seed(url, spares)
            port = free_loopback_port()
            broker = BrokerProcess(broker_env(url, slapd, port, work), port,
                                   work / "broker.log")
            try:
                asyncio.run(_storm(broker, warm, [0.05 * i for i in range(len(warm))]))
                check_and_release(url, [])
                args.out.parent.mkdir(parents=True, exist_ok=True)
                raw = args.out.with_suffix(".raw")
                cmd = [py_spy, "record", "--pid", str(broker.proc.pid), "--format", "raw",
                       "--rate", "200", "--nonblocking", "--output", str(raw)]
                if not args.all_threads:
                    cmd.append("--gil")
                spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                time.sleep(1.0)  # py-spy attaches
                t = time.perf_counter()
                results, wall = asyncio.run(_storm(broker, users, [0.0] * len(users)))
                took = time.perf_counter() - t
                spy.send_signal(signal.SIGINT)
                _, err = spy.communicate(timeout=30)
                failed = [r.error for r in results if not r.ok]
                report = (f"{args.database}: {len(users)} clerks at once, {wall:.2f} s to "
                          f"the last token ({took:.2f} s in all), {len(failed)} errors "
                          f"{failed[:3]}\n" + summarize(raw))
                if not raw.exists():
                    report += f"\npy-spy wrote nothing: {err.decode(errors='replace')}"
                args.out.write_text(report + "\n", encoding="utf-8")
                print(report)
            finally:
                broker.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
