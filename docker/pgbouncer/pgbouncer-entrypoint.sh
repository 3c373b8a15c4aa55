#!/bin/sh
# pgbouncer-entrypoint.sh: runs before edoburu/pgbouncer's /entrypoint.sh.
#
# That image's entrypoint writes one user (DB_USER/DB_PASSWORD) to
# userlist.txt; like bin/eds-cluster, PgBouncer here serves eds_app, eds_etl
# and postgres (admin console). SCRAM towards the server needs the plaintext
# passwords, so userlist.txt (inside the container only, mode 0600) holds
# them; they come from the environment (docker/.env), never from a file in
# the repository. The image's entrypoint then generates pgbouncer.ini from
# DB_HOST, DB_NAME, POOL_MODE, ... and skips users already listed.
set -eu

: "${EDS_APP_PASSWORD:?set EDS_APP_PASSWORD in docker/.env}"
: "${EDS_ETL_PASSWORD:?set EDS_ETL_PASSWORD in docker/.env}"
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in docker/.env}"
auth_file=${AUTH_FILE:-/etc/pgbouncer/userlist.txt}

# "user" "password", with " doubled.
entry() {
	printf '"%s" "%s"\n' "$1" "$(printf '%s' "$2" | sed 's/"/""/g')"
}

umask 077
tmp="$auth_file.tmp.$$"
{
	entry eds_app "$EDS_APP_PASSWORD"
	entry eds_etl "$EDS_ETL_PASSWORD"
	entry postgres "$POSTGRES_PASSWORD"
} >"$tmp"
mv -f "$tmp" "$auth_file"
unset EDS_ETL_PASSWORD POSTGRES_PASSWORD

exec /entrypoint.sh "$@"
