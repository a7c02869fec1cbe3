#!/usr/bin/env bash
# Make a local PostgreSQL ready for the hub's tests and print ONE line to stdout:
#   export CITYCAST_TEST_PG_URL=postgresql+psycopg://...
# Everything else goes to stderr, so `eval "$(scripts/pg.sh)"` works. Idempotent and quick when the cluster
# is already up. Needs root on Debian (postgresql-common: pg_lsclusters, pg_createcluster, pg_ctlcluster).
# If CITYCAST_TEST_PG_URL is already set (e.g. a CI service container), it is printed back unchanged.
set -euo pipefail
exec </dev/null

CLUSTER="${CITYCAST_PG_CLUSTER:-main}" # the Debian cluster name; Debian's default is "main"
ROLE=citycast_test
DB=citycast_test
PASSWORD=citycast_test # a throw-away test role on localhost only

log() { echo "pg.sh: $*" >&2; }
die() {
  log "$*"
  exit 1
}

if [[ -n "${CITYCAST_TEST_PG_URL:-}" ]]; then
  log "using CITYCAST_TEST_PG_URL from the environment"
  printf 'export CITYCAST_TEST_PG_URL=%q\n' "$CITYCAST_TEST_PG_URL"
  exit 0
fi

if [[ "$(id -u)" != 0 ]]; then
  # A CI runner is often a plain user with password-less sudo.
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    exec sudo -n -E "$0" "$@"
  fi
  die "needs root to manage the local cluster (or set CITYCAST_TEST_PG_URL yourself)"
fi
command -v pg_lsclusters >/dev/null || die "postgresql is not installed (scripts/setup.sh installs it)"

# The newest server version installed, e.g. 15.
version="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)"
[[ -n "$version" && -x "/usr/lib/postgresql/$version/bin/postgres" ]] || die "no PostgreSQL server under /usr/lib/postgresql"

# pg_lsclusters -h: "version cluster port status owner datadir logfile"
cluster_line() { pg_lsclusters -h 2>/dev/null | awk -v v="$version" -v c="$CLUSTER" '$1 == v && $2 == c'; }

if [[ -z "$(cluster_line)" ]]; then
  log "creating cluster $version/$CLUSTER"
  pg_createcluster "$version" "$CLUSTER" >&2 || die "pg_createcluster $version $CLUSTER failed"
fi

read -r _ _ port status _ _ logfile <<<"$(cluster_line)"
if [[ "$status" != online* ]]; then
  log "starting cluster $version/$CLUSTER on port $port"
  if ! pg_ctlcluster "$version" "$CLUSTER" start >&2; then
    [[ -f "$logfile" ]] && tail -n 20 "$logfile" >&2
    die "pg_ctlcluster $version $CLUSTER start failed"
  fi
fi

socket_dir=/var/run/postgresql
for _ in $(seq 1 60); do
  if pg_isready -q -h "$socket_dir" -p "$port"; then
    break
  fi
  sleep 0.5
done
pg_isready -q -h "$socket_dir" -p "$port" || die "PostgreSQL $version/$CLUSTER is not accepting connections on port $port"

# Run SQL as the postgres superuser over the local socket (peer auth). cd / so psql does not complain about a
# working directory the postgres user cannot read.
as_postgres() { (cd / && runuser -u postgres -- psql -X -q -A -t -v ON_ERROR_STOP=1 -h "$socket_dir" -p "$port" "$@"); }

as_postgres -d postgres >&2 <<SQL || die "could not create role $ROLE"
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$ROLE') THEN
    CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD';
  ELSE
    ALTER ROLE $ROLE LOGIN PASSWORD '$PASSWORD';
  END IF;
END
\$\$;
SQL

if [[ "$(as_postgres -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]]; then
  log "creating database $DB"
  as_postgres -d postgres -c "CREATE DATABASE $DB OWNER $ROLE" >&2 || die "could not create database $DB"
fi

url="postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$port/$DB"
log "PostgreSQL $version ready: $ROLE@127.0.0.1:$port/$DB"
printf 'export CITYCAST_TEST_PG_URL=%q\n' "$url"
