#!/usr/bin/env bash
# Start the demo/test OpenLDAP server on loopback.
#
#   start-slapd.sh RUN_DIR PORT [LDIF]
#
# Idempotent: creates RUN_DIR/{conf,db}, renders slapd.conf.in into RUN_DIR/conf,
# loads LDIF (default: demo.ldif next to this script) with slapadd only while the
# database is empty (or, slapd stopped, when the LDIF changed since it was loaded: this
# is the demo/test directory, its LDIF is its source), starts slapd on ldap://127.0.0.1:PORT/ unless the slapd named by
# RUN_DIR/slapd.pid is alive, then waits (at most ~10 s) until the broker's service
# account can bind. Exits non-zero with a message on stderr otherwise.
# Stop it with stop-slapd.sh RUN_DIR.
#
# Environment: SLAPD_ROOT_PASSWORD (rootdn password, default admin-secret),
#              SLAPD_WAIT_S (how long to wait for the first bind, default 10).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
service_dn="cn=broker,ou=services,dc=district,dc=example"
service_pw="broker-secret"

die() { echo "start-slapd: $*" >&2; exit 1; }

[[ $# -ge 2 && $# -le 3 ]] || die "usage: start-slapd.sh RUN_DIR PORT [LDIF]"
port=$2
ldif=${3:-$here/demo.ldif}
[[ $port =~ ^[0-9]+$ ]] && (( port >= 1 && port <= 65535 )) || die "PORT must be 1-65535, got '$port'"
[[ -r $ldif ]] || die "cannot read LDIF file '$ldif'"
PATH=$PATH:/usr/sbin
for tool in slapd slapadd slapcat slappasswd ldapwhoami setsid; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (Debian: apt-get install slapd ldap-utils)"
done

umask 077
mkdir -p "$1/conf" "$1/db"
run_dir=$(cd "$1" && pwd)
conf=$run_dir/conf/slapd.conf
pidfile=$run_dir/slapd.pid
log=$run_dir/slapd.log
url="ldap://127.0.0.1:$port/"

# Render the template. sed replacement text must have \, & and the delimiter escaped.
sed_escape() { printf '%s' "$1" | sed -e 's/[\\&|]/\\&/g'; }
rootpw_hash=$(slappasswd -s "${SLAPD_ROOT_PASSWORD:-admin-secret}")
sed -e "s|@RUN_DIR@|$(sed_escape "$run_dir")|g" \
    -e "s|@ROOTPW@|$(sed_escape "$rootpw_hash")|g" \
    "$here/slapd.conf.in" > "$conf.tmp"
mv "$conf.tmp" "$conf"

slapd_alive() {
    local pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
        && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == slapd ]]
}

# Load the LDIF only into an empty database: no data file yet, or one without entries.
# A database that exists but cannot be read is reported, never overwritten.
db_empty=no
ldif_sum=$(sha256sum "$ldif" | cut -d' ' -f1)
loaded=$run_dir/db/loaded-ldif.sha256
if [[ -s $run_dir/db/data.mdb && $(cat "$loaded" 2>/dev/null) != "$ldif_sum" ]]; then
    # this is the demo/test directory: a newer LDIF (new demo accounts) replaces it
    if slapd_alive; then
        echo "start-slapd: $ldif changed since it was loaded; stop slapd to reload it" >&2
    else
        echo "start-slapd: $ldif changed since it was loaded: reloading"
        rm -f "$run_dir"/db/*.mdb
    fi
fi
if [[ ! -s $run_dir/db/data.mdb ]]; then
    db_empty=yes
elif ! dump=$(slapcat -f "$conf" 2>&1); then
    die "cannot read the existing database in $run_dir/db (not reloading it):
$dump"
elif [[ -z $dump ]]; then
    db_empty=yes
fi
if [[ $db_empty == yes ]]; then
    if slapd_alive; then
        die "slapd (pid $(<"$pidfile")) is running on an empty database; stop it first"
    fi
    echo "start-slapd: loading $ldif into $run_dir/db"
    if ! out=$(slapadd -f "$conf" -l "$ldif" 2>&1); then
        rm -f "$run_dir"/db/*.mdb
        die "slapadd failed (database left empty):
$out"
    fi
    echo "$ldif_sum" > "$loaded"
fi

if slapd_alive; then
    echo "start-slapd: slapd already running (pid $(<"$pidfile"))"
else
    rm -f "$pidfile"
    # Foreground slapd (-d none logs errors such as "Address already in use" to the log)
    # in its own session, so it outlives this script and its caller's process group.
    setsid slapd -f "$conf" -h "$url" -d none >"$log" 2>&1 </dev/null &
    started_pid=$!
    echo "start-slapd: starting slapd (pid $started_pid) on $url, log $log"
fi

# Wait, bounded, until the service account can bind.
deadline=$(( $(date +%s) + ${SLAPD_WAIT_S:-10} ))
while :; do
    if err=$(ldapwhoami -x -o nettimeout=1 -H "$url" -D "$service_dn" -w "$service_pw" 2>&1); then
        echo "start-slapd: ready on $url"
        exit 0
    fi
    if [[ -n ${started_pid:-} ]] && ! kill -0 "$started_pid" 2>/dev/null && ! slapd_alive; then
        die "slapd exited during startup. slapd log ($log):
$(tail -n 30 "$log" 2>/dev/null)"
    fi
    if (( $(date +%s) >= deadline )); then
        die "slapd did not accept the service account bind on $url within ${SLAPD_WAIT_S:-10} s.
last ldapwhoami error: $err
slapd log ($log):
$(tail -n 30 "$log" 2>/dev/null)"
    fi
    sleep 0.2
done
