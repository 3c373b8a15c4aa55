#!/usr/bin/env bash
# 20-eds-warehouse.sh: first start of warehouse-db (EDS_ROLE=warehouse).
#
# Runs once, at initdb, against the official entrypoint's socket-only
# temporary server. Mirrors setup_warehouse in bin/eds-cluster:
#   pg_cron, dblink and eds in warehouse_db;
#   warehouse_user (member of warehouse_reader): Metabase's login to the data;
#   metabase (owner of metabase_db): Metabase's own metadata;
#   eds_set_source(...) towards the primary as eds_etl, and the pg_cron job.
# eds_set_source only stores the declaration (foreign server eds_source and a
# user mapping holding the password); it does not connect, so the primary does
# not have to be up yet. Passwords reach psql through \getenv.
set -Eeuo pipefail

if [[ ${EDS_ROLE:-} != warehouse ]]; then
	exit 0
fi
: "${WAREHOUSE_USER_PASSWORD:?set WAREHOUSE_USER_PASSWORD in docker/.env}"
: "${METABASE_DB_PASSWORD:?set METABASE_DB_PASSWORD in docker/.env}"
: "${EDS_ETL_PASSWORD:?set EDS_ETL_PASSWORD in docker/.env}"
export EDS_ETL_SOURCE_HOST=${EDS_ETL_SOURCE_HOST:-postgres-primary}
export EDS_ETL_SOURCE_PORT=${EDS_ETL_SOURCE_PORT:-5432}
export EDS_ETL_SOURCE_DB=${EDS_ETL_SOURCE_DB:-loans_db}
export EDS_ETL_SCHEDULE=${EDS_ETL_SCHEDULE:-*/15 * * * *}
db=${POSTGRES_DB:-warehouse_db}

run_psql() {
	psql -X -q -v ON_ERROR_STOP=1 -v VERBOSITY=terse --no-password \
		--username "${POSTGRES_USER:-postgres}" --dbname "$1" >/dev/null
}

echo "eds: logins warehouse_user and metabase, database metabase_db"
run_psql postgres <<'SQL'
SET client_min_messages = warning;
SET log_min_error_statement = panic;
\getenv warehouse_password WAREHOUSE_USER_PASSWORD
\getenv metabase_password METABASE_DB_PASSWORD
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'warehouse_user') AS missing \gset
\if :missing
CREATE ROLE warehouse_user LOGIN;
\endif
ALTER ROLE warehouse_user PASSWORD :'warehouse_password';
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'metabase') AS missing \gset
\if :missing
CREATE ROLE metabase LOGIN;
\endif
ALTER ROLE metabase PASSWORD :'metabase_password';
SELECT NOT EXISTS (SELECT FROM pg_database WHERE datname = 'metabase_db') AS missing \gset
\if :missing
CREATE DATABASE metabase_db OWNER metabase;
\endif
REVOKE ALL ON DATABASE metabase_db FROM PUBLIC;
SQL

echo "eds: pg_cron, dblink, eds in $db; ETL source and schedule"
run_psql "$db" <<'SQL'
SET client_min_messages = warning;
SET log_min_error_statement = panic;
CREATE EXTENSION IF NOT EXISTS pg_cron;
CREATE EXTENSION IF NOT EXISTS dblink;
CREATE EXTENSION IF NOT EXISTS eds CASCADE;
-- warehouse_reader comes from CREATE EXTENSION eds.
GRANT warehouse_reader TO warehouse_user;
\getenv etl_password EDS_ETL_PASSWORD
\getenv source_host EDS_ETL_SOURCE_HOST
\getenv source_port EDS_ETL_SOURCE_PORT
\getenv source_db EDS_ETL_SOURCE_DB
\getenv etl_schedule EDS_ETL_SCHEDULE
SELECT NOT EXISTS (SELECT FROM pg_foreign_server WHERE srvname = 'eds_source') AS missing \gset
\if :missing
-- libpq quoting: the password in single quotes, with \ and ' escaped.
SELECT eds_set_source(format('host=%s port=%s dbname=%s user=eds_etl password=''%s''',
		:'source_host', :'source_port', :'source_db',
		replace(replace(:'etl_password', '\', '\\'), '''', '\''')));
\endif
SELECT NOT EXISTS (SELECT FROM cron.job WHERE jobname = 'eds_etl') AS missing \gset
\if :missing
SELECT eds_schedule_etl(:'etl_schedule');
\endif
SQL

echo "eds: pg_hba.conf (scram-sha-256; no replication connections)"
cat >"$PGDATA/pg_hba.conf" <<'EOF'
# Written at initdb by /docker-entrypoint-initdb.d/20-eds-warehouse.sh
# (mirrors bin/eds-cluster). Edit here and `SELECT pg_reload_conf()`.
# TYPE  DATABASE     USER        ADDRESS   METHOD
# Unix socket, inside the container only (docker exec ... psql, and pg_cron
# running the ETL job through cron.host=/var/run/postgresql).
local   all          all                   trust
host    all          all         all       scram-sha-256
# No replication line: the warehouse accepts no replication connections.
EOF
chmod 600 "$PGDATA/pg_hba.conf"
