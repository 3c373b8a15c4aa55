#!/usr/bin/env bash
# 10-eds-primary.sh: first start of postgres-primary (EDS_ROLE=primary).
#
# The official image's entrypoint runs /docker-entrypoint-initdb.d/*.sh once,
# on an empty data directory, against a temporary server that listens on the
# unix socket only (with this service's -c settings, so pg_cron and eds are
# preloaded). Mirrors setup_primary and hba_conf in bin/eds-cluster:
#   replicator role and the slots replica1_slot/replica2_slot,
#   CREATE EXTENSION eds in loans_db, the logins eds_app (app_user) and
#   eds_etl (etl_reader), scram-sha-256 pg_hba.conf.
# Passwords come from the environment (docker/.env) and reach psql through
# \getenv: never on a command line, never in a file.
set -Eeuo pipefail

if [[ ${EDS_ROLE:-} != primary ]]; then
	exit 0
fi
: "${REPLICATION_PASSWORD:?set REPLICATION_PASSWORD in docker/.env}"
: "${EDS_APP_PASSWORD:?set EDS_APP_PASSWORD in docker/.env}"
: "${EDS_ETL_PASSWORD:?set EDS_ETL_PASSWORD in docker/.env}"
db=${POSTGRES_DB:-loans_db}

run_psql() {
	psql -X -q -v ON_ERROR_STOP=1 -v VERBOSITY=terse --no-password \
		--username "${POSTGRES_USER:-postgres}" --dbname "$1" >/dev/null
}

echo "eds: replicator role and replication slots"
run_psql postgres <<'SQL'
SET log_min_error_statement = panic;
\getenv replication_password REPLICATION_PASSWORD
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'replicator') AS missing \gset
\if :missing
CREATE ROLE replicator LOGIN REPLICATION;
\endif
ALTER ROLE replicator PASSWORD :'replication_password';
SELECT pg_create_physical_replication_slot(s, true)
  FROM unnest(ARRAY['replica1_slot', 'replica2_slot']) AS s
 WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = s);
SQL

echo "eds: CREATE EXTENSION eds in $db, logins eds_app and eds_etl"
run_psql "$db" <<'SQL'
SET client_min_messages = warning;
SET log_min_error_statement = panic;
CREATE EXTENSION IF NOT EXISTS eds CASCADE;
\getenv app_password EDS_APP_PASSWORD
\getenv etl_password EDS_ETL_PASSWORD
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'eds_app') AS missing \gset
\if :missing
CREATE ROLE eds_app LOGIN;
\endif
GRANT app_user TO eds_app;
ALTER ROLE eds_app PASSWORD :'app_password';
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'eds_etl') AS missing \gset
\if :missing
CREATE ROLE eds_etl LOGIN;
\endif
GRANT etl_reader TO eds_etl;
ALTER ROLE eds_etl PASSWORD :'etl_password';
SQL

# Read by the final server when the entrypoint restarts it after initdb.
echo "eds: pg_hba.conf (scram-sha-256; replicator: replication only)"
cat >"$PGDATA/pg_hba.conf" <<'EOF'
# Written at initdb by /docker-entrypoint-initdb.d/10-eds-primary.sh
# (mirrors bin/eds-cluster). Edit here and `SELECT pg_reload_conf()`.
# TYPE  DATABASE     USER        ADDRESS   METHOD
# replicator may only open replication connections.
local   all          replicator            reject
host    all          replicator  all       reject
# Unix socket, inside the container only (docker exec ... psql -U postgres),
# as in the official image.
local   all          all                   trust
host    replication  replicator  all       scram-sha-256
host    all          all         all       scram-sha-256
EOF
chmod 600 "$PGDATA/pg_hba.conf"
