#!/usr/bin/env bash
# Start a PostgreSQL server for the broker on loopback (Debian's `postgresql` package).
#
#   start-postgres.sh RUN_DIR PORT
#
# Idempotent: runs initdb into RUN_DIR/data once (as the `postgres` OS user when started
# as root, RUN_DIR chowned to it; as the calling user otherwise), starts the server with
# pg_ctl on 127.0.0.1:PORT with its unix socket in RUN_DIR unless the server of RUN_DIR
# already runs, creates the login role and the database if missing, sets the role's
# password, then waits (bounded) until the role can log in over TCP with that password.
# Exits non-zero with a message on stderr (and the server log) otherwise.
# Prints the SQLAlchemy URL with the password masked.  Stop it with stop-postgres.sh.
#
# Environment: VDI_PG_DATABASE (default vdi), VDI_PG_USER (default vdi),
#              VDI_PG_PASSWORD (default vdi-secret; never passed on a command line),
#              VDI_PG_WAIT_S (how long to wait for the server, default 30),
#              VDI_PG_OPTIONS (extra `-c name=value` server options, e.g. max_connections).
set -euo pipefail

die() { echo "start-postgres: $*" >&2; exit 1; }

[[ $# -eq 2 ]] || die "usage: start-postgres.sh RUN_DIR PORT"
port=$2
[[ $port =~ ^[0-9]+$ ]] && (( port >= 1 && port <= 65535 )) || die "PORT must be 1-65535, got '$port'"
database=${VDI_PG_DATABASE:-vdi}
role=${VDI_PG_USER:-vdi}
export VDI_PG_PASSWORD=${VDI_PG_PASSWORD:-vdi-secret}
wait_s=${VDI_PG_WAIT_S:-30}
[[ $database =~ ^[a-z_][a-z0-9_]*$ ]] || die "VDI_PG_DATABASE must be a plain lower-case name"
[[ $role =~ ^[a-z_][a-z0-9_]*$ ]] || die "VDI_PG_USER must be a plain lower-case name"
[[ -n ${VDI_PG_PASSWORD// /} ]] || die "VDI_PG_PASSWORD must not be blank"

# Debian keeps the server binaries out of PATH, one directory per major version.
bindir=""
if command -v pg_config >/dev/null 2>&1 && [[ -x $(pg_config --bindir)/initdb ]]; then
    bindir=$(pg_config --bindir)
fi
if [[ -z $bindir ]]; then
    bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
fi
[[ -n $bindir && -x $bindir/initdb && -x $bindir/pg_ctl ]] \
    || die "PostgreSQL server binaries not found (Debian: apt-get install postgresql)"
for tool in psql pg_isready; do
    [[ -x $bindir/$tool ]] || command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done

mkdir -p "$1"
run_dir=$(cd "$1" && pwd)
data=$run_dir/data
log=$run_dir/postgres.log

# As root, the server runs as the `postgres` OS user (initdb refuses root).
if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "no 'postgres' OS user (Debian: apt-get install postgresql)"
    chown postgres: "$run_dir"
    chmod 0700 "$run_dir"
    # every directory above RUN_DIR must let that user through
    if ! runuser -u postgres -- test -w "$run_dir"; then
        die "the postgres OS user cannot reach $run_dir (a parent directory is not searchable by it)"
    fi
    as_pg() { runuser -u postgres -- "$@"; }
else
    chmod 0700 "$run_dir"
    as_pg() { "$@"; }
fi

if [[ ! -s $data/PG_VERSION ]]; then
    if [[ -e $data ]] && [[ -n $(ls -A "$data" 2>/dev/null) ]]; then
        die "$data exists but holds no cluster (no PG_VERSION); not touching it"
    fi
    echo "start-postgres: initdb into $data"
    # Local (socket) logins: peer, i.e. only the OS user that owns the cluster is its
    # superuser. TCP logins: password (SCRAM) only.
    if ! out=$(as_pg "$bindir/initdb" -D "$data" -U postgres -E UTF8 --locale=C.UTF-8 \
                 --auth-local=peer --auth-host=scram-sha-256 2>&1); then
        die "initdb failed:
$out"
    fi
fi

server_alive() { as_pg "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; }

if server_alive; then
    running_port=$(sed -n 4p "$data/postmaster.pid" 2>/dev/null || true)
    [[ $running_port == "$port" ]] \
        || die "the server of $data already runs on port ${running_port:-?}, not $port"
    echo "start-postgres: server already running ($data)"
else
    echo "start-postgres: starting the server on 127.0.0.1:$port, log $log"
    # setsid: the server outlives this script and its caller's process group.
    # shellcheck disable=SC2086  # VDI_PG_OPTIONS holds several words on purpose
    if ! out=$(as_pg setsid -w "$bindir/pg_ctl" -D "$data" -l "$log" -w -t "$wait_s" start \
                 -o "-c listen_addresses=127.0.0.1 -p $port -k $run_dir ${VDI_PG_OPTIONS:-}" 2>&1); then
        die "pg_ctl could not start the server:
$out
server log ($log):
$(tail -n 30 "$log" 2>/dev/null)"
    fi
fi

# Role and database (the password travels in the environment, not on a command line).
sql=$(cat <<'SQL'
\set ON_ERROR_STOP on
\getenv pw VDI_PG_PASSWORD
\getenv role VDI_PG_ROLE
\getenv db VDI_PG_DB
SELECT format('CREATE ROLE %I LOGIN', :'role')
    WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'role', :'pw') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
    WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SQL
)
if ! out=$(VDI_PG_ROLE=$role VDI_PG_DB=$database as_pg "$bindir/psql" -X -q -h "$run_dir" \
             -p "$port" -U postgres -d postgres <<<"$sql" 2>&1); then
    die "could not create role '$role' and database '$database':
$out
server log ($log):
$(tail -n 30 "$log" 2>/dev/null)"
fi

# Wait, bounded, until the role logs in over TCP with its password.
deadline=$(( $(date +%s) + wait_s ))
while :; do
    if err=$(PGPASSWORD=$VDI_PG_PASSWORD PGCONNECT_TIMEOUT=2 "$bindir/psql" -X -q -t \
               -h 127.0.0.1 -p "$port" -U "$role" -d "$database" -c "SELECT 1" 2>&1); then
        echo "start-postgres: ready: postgresql+psycopg://$role:***@127.0.0.1:$port/$database"
        exit 0
    fi
    if (( $(date +%s) >= deadline )); then
        die "'$role' could not log in to 127.0.0.1:$port/$database within $wait_s s.
last error: $err
server log ($log):
$(tail -n 30 "$log" 2>/dev/null)"
    fi
    sleep 0.2
done
