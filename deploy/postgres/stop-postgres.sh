#!/usr/bin/env bash
# Stop the PostgreSQL server started by start-postgres.sh RUN_DIR (nothing else).
#
#   stop-postgres.sh RUN_DIR
#
# Idempotent: succeeds when nothing runs there. A fast shutdown (clients are
# disconnected, the server checkpoints), bounded; then an immediate one.
set -euo pipefail

die() { echo "stop-postgres: $*" >&2; exit 1; }
[[ $# -eq 1 ]] || die "usage: stop-postgres.sh RUN_DIR"
data=$1/data
if [[ ! -s $data/PG_VERSION ]]; then
    echo "stop-postgres: no cluster in $data, nothing to stop"
    exit 0
fi
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if command -v pg_config >/dev/null 2>&1 && [[ -x $(pg_config --bindir)/pg_ctl ]]; then
    bindir=$(pg_config --bindir)
fi
[[ -n $bindir && -x $bindir/pg_ctl ]] || die "pg_ctl not found (Debian: apt-get install postgresql)"
if [[ $(id -u) -eq 0 ]]; then
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

if ! as_pg "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    echo "stop-postgres: no server running for $data"
    exit 0
fi
if out=$(as_pg "$bindir/pg_ctl" -D "$data" -m fast -w -t 20 stop 2>&1); then
    echo "stop-postgres: stopped ($data)"
    exit 0
fi
echo "stop-postgres: fast shutdown did not finish in 20 s, shutting down immediately: $out" >&2
as_pg "$bindir/pg_ctl" -D "$data" -m immediate -w -t 10 stop \
    || die "the server of $data did not stop"
