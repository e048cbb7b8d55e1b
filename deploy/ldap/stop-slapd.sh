#!/usr/bin/env bash
# Stop the slapd started by start-slapd.sh RUN_DIR (by its pidfile; nothing else).
#
#   stop-slapd.sh RUN_DIR
#
# Idempotent: succeeds when nothing is running. Sends TERM, waits up to ~10 s for a
# clean shutdown (mdb flushes), then KILL.
set -euo pipefail

die() { echo "stop-slapd: $*" >&2; exit 1; }
[[ $# -eq 1 ]] || die "usage: stop-slapd.sh RUN_DIR"
pidfile=$1/slapd.pid

if [[ ! -s $pidfile ]]; then
    echo "stop-slapd: no pidfile in $1, nothing to stop"
    exit 0
fi
pid=$(<"$pidfile")
[[ $pid =~ ^[0-9]+$ ]] || die "pidfile $pidfile does not hold a pid"
if ! kill -0 "$pid" 2>/dev/null || [[ $(cat "/proc/$pid/comm" 2>/dev/null) != slapd ]]; then
    echo "stop-slapd: pid $pid is not a running slapd, nothing to stop"
    rm -f "$pidfile"
    exit 0
fi

kill -TERM "$pid"
for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || { echo "stop-slapd: stopped slapd (pid $pid)"; exit 0; }
    sleep 0.2
done
echo "stop-slapd: slapd (pid $pid) ignored TERM for 10 s, sending KILL" >&2
kill -KILL "$pid" 2>/dev/null || true
rm -f "$pidfile"
