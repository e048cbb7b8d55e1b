#!/usr/bin/env bash
# Give the audit trail an owner other than the broker's database role, so that a broker
# whose machine is taken over can add audit records but never disable the triggers that
# refuse UPDATE, DELETE and TRUNCATE, nor drop or replace the table.
#
#   protect-audit.sh RUN_DIR PORT
#
# Run it on the database server after `vdi migrate` (and again after a migration that
# changes the audit table: such a migration must then run as the audit owner). It uses
# the cluster's superuser over the local socket in RUN_DIR (the server of
# start-postgres.sh). Idempotent. It:
#   - creates the role `vdi_audit_owner` (NOLOGIN: nobody signs in as it);
#   - makes it the owner of the `audit` table, its id sequence and its trigger functions;
#   - gives the database and its `public` schema to the superuser, the broker's role
#     CONNECT and TEMPORARY on the one and USAGE and CREATE on the other (a database's
#     owner may drop it, a schema's owner any table in it);
#   - refuses to run while the broker's role is a superuser or may create roles (it
#     could then make itself the audit owner);
#   - grants the broker's role SELECT and INSERT on `audit` and what the chain needs of
#     the id sequence (USAGE, SELECT, UPDATE: ids are given under an advisory lock).
# Environment: VDI_PG_DATABASE (default vdi), VDI_PG_USER (default vdi).
set -euo pipefail

die() { echo "protect-audit: $*" >&2; exit 1; }

[[ $# -eq 2 ]] || die "usage: protect-audit.sh RUN_DIR PORT"
port=$2
[[ $port =~ ^[0-9]+$ ]] && (( port >= 1 && port <= 65535 )) || die "PORT must be 1-65535, got '$port'"
database=${VDI_PG_DATABASE:-vdi}
role=${VDI_PG_USER:-vdi}
[[ $database =~ ^[a-z_][a-z0-9_]*$ ]] || die "VDI_PG_DATABASE must be a plain lower-case name"
[[ $role =~ ^[a-z_][a-z0-9_]*$ ]] || die "VDI_PG_USER must be a plain lower-case name"
[[ -d $1 ]] || die "no such directory: $1 (the RUN_DIR of start-postgres.sh)"
run_dir=$(cd "$1" && pwd)

psql_bin=$(command -v psql || ls /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -n 1 || true)
[[ -n $psql_bin && -x $psql_bin ]] || die "psql not found (Debian: apt-get install postgresql)"
if [[ $(id -u) -eq 0 ]]; then
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

# A role that is a superuser or may create roles could make itself the audit owner.
if ! powers=$(as_pg "$psql_bin" -X -q -t -A -h "$run_dir" -p "$port" -U postgres -d "$database" \
                -c "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = '$role'" 2>&1); then
    die "could not read the role '$role': $powers"
fi
[[ -n $powers ]] || die "no role '$role' in the cluster"
[[ $powers == f ]] || die "the role '$role' is a superuser or may create roles: it could make itself the audit owner (ALTER ROLE $role NOSUPERUSER NOCREATEROLE first)"

sql=$(cat <<'SQL'
\set ON_ERROR_STOP on
\getenv role VDI_PG_ROLE
DO $$ BEGIN
    IF to_regclass('public.audit') IS NULL THEN
        RAISE EXCEPTION 'the audit table is missing: run vdi migrate first';
    END IF;
END $$;
BEGIN;
SELECT 'CREATE ROLE vdi_audit_owner NOLOGIN'
    WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vdi_audit_owner') \gexec
ALTER SCHEMA public OWNER TO postgres;
SELECT format('ALTER DATABASE %I OWNER TO postgres', current_database()) \gexec
SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', current_database(), :'role')
    \gexec
SELECT format('GRANT USAGE, CREATE ON SCHEMA public TO %I', :'role') \gexec
ALTER TABLE audit OWNER TO vdi_audit_owner;
SELECT format('ALTER SEQUENCE %s OWNER TO vdi_audit_owner',
              pg_get_serial_sequence('audit', 'id')) \gexec
SELECT format('ALTER FUNCTION %s OWNER TO vdi_audit_owner', p.oid::regprocedure)
    FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
    WHERE t.tgrelid = 'audit'::regclass AND NOT t.tgisinternal \gexec
SELECT format('REVOKE ALL ON audit FROM %I', :'role') \gexec
SELECT format('GRANT SELECT, INSERT ON audit TO %I', :'role') \gexec
SELECT format('GRANT USAGE, SELECT, UPDATE ON SEQUENCE %s TO %I',
              pg_get_serial_sequence('audit', 'id'), :'role') \gexec
COMMIT;
SQL
)
if ! out=$(VDI_PG_ROLE=$role as_pg "$psql_bin" -X -q -h "$run_dir" -p "$port" -U postgres \
             -d "$database" <<<"$sql" 2>&1); then
    die "could not protect the audit table of '$database':
$out"
fi
echo "protect-audit: the audit table of '$database' is owned by vdi_audit_owner; '$role' may read and add records only"
