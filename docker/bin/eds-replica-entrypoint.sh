#!/usr/bin/env bash
# eds-replica-entrypoint.sh: entrypoint of postgres-replica1 / postgres-replica2.
#
# First start (no data directory yet): wait for the primary, clone it with
# pg_basebackup through this replica's slot into $PGDATA.partial, and rename
# that to $PGDATA only when the clone is complete (an interrupted clone is
# simply redone), as clone_replica in bin/eds-cluster does.
# Every start: rewrite the passfile from REPLICATION_PASSWORD and, while the
# node is a standby, its primary_conninfo / primary_slot_name; then hand over
# to the image's docker-entrypoint.sh with the same arguments ("postgres -c ...").
#
# The password never lands in postgresql.auto.conf: pg_basebackup and the
# walreceiver read it from a 0600 passfile named by passfile= in
# primary_conninfo.
#
# Environment: EDS_REPLICA_NAME (replica1|replica2, also the application_name),
# REPLICATION_PASSWORD; optional EDS_PRIMARY_HOST (postgres-primary),
# EDS_PRIMARY_PORT (5432), EDS_REPLICA_SLOT (<name>_slot),
# EDS_REPLICATION_PASSFILE (/var/lib/postgresql/replicator.pgpass),
# EDS_WAIT_SECONDS (300).
set -Eeuo pipefail

readonly PROG=eds-replica-entrypoint
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
note() { printf '%s: %s\n' "$PROG" "$*" >&2; }

: "${EDS_REPLICA_NAME:?set EDS_REPLICA_NAME (replica1 or replica2)}"
: "${REPLICATION_PASSWORD:?set REPLICATION_PASSWORD in docker/.env}"
[[ $EDS_REPLICA_NAME =~ ^[a-z0-9_]+$ ]] ||
	die "EDS_REPLICA_NAME=$EDS_REPLICA_NAME: use lower-case letters, digits and _"

PRIMARY_HOST=${EDS_PRIMARY_HOST:-postgres-primary}
PRIMARY_PORT=${EDS_PRIMARY_PORT:-5432}
SLOT=${EDS_REPLICA_SLOT:-${EDS_REPLICA_NAME}_slot}
PASSFILE=${EDS_REPLICATION_PASSFILE:-/var/lib/postgresql/replicator.pgpass}
WAIT_SECONDS=${EDS_WAIT_SECONDS:-300}
export PGDATA=${PGDATA:-/var/lib/postgresql/data/pgdata}
unset PGPASSWORD PGHOST PGPORT PGUSER PGDATABASE PGPASSFILE

# Root: make the volume usable by postgres, then continue as postgres.
if [[ $(id -u) == 0 ]]; then
	parent=$(dirname -- "$PGDATA")
	mkdir -p -- "$parent"
	chown postgres:postgres -- "$parent"
	chmod 700 -- "$parent"
	exec gosu postgres "${BASH_SOURCE[0]}" "$@"
fi

# host:port:database:user:password; \ and : escaped as pgpass wants.
write_passfile() {
	local pw=${REPLICATION_PASSWORD//\\/\\\\} tmp
	pw=${pw//:/\\:}
	tmp=$(umask 077 && mktemp "$PASSFILE.XXXXXX")
	printf '%s:%s:*:replicator:%s\n' "$PRIMARY_HOST" "$PRIMARY_PORT" "$pw" >"$tmp"
	mv -f -- "$tmp" "$PASSFILE"
}

primary_conninfo() {
	printf 'host=%s port=%s user=replicator passfile=%s application_name=%s' \
		"$PRIMARY_HOST" "$PRIMARY_PORT" "$PASSFILE" "$EDS_REPLICA_NAME"
}

# postgresql.auto.conf of a standby in DIR: whatever pg_basebackup -R wrote,
# with our conninfo (passfile, no password) and slot.
write_standby_settings() {
	local file=$1/postgresql.auto.conf tmp
	tmp=$(umask 077 && mktemp "$file.XXXXXX")
	grep -v -E '^[[:space:]]*(primary_conninfo|primary_slot_name|hot_standby_feedback)[[:space:]]*=' \
		-- "$file" >"$tmp" || true
	{
		printf "primary_conninfo = '%s'\n" "$(primary_conninfo)"
		printf "primary_slot_name = '%s'\n" "$SLOT"
		printf 'hot_standby_feedback = on\n'
	} >>"$tmp"
	mv -f -- "$tmp" "$file"
	if grep -qi 'password=' -- "$file"; then
		die "a password ended up in $file"
	fi
}

wait_for_primary() {
	local waited=0
	until pg_isready -q -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -t 2; do
		((waited < WAIT_SECONDS)) ||
			die "primary $PRIMARY_HOST:$PRIMARY_PORT not ready after ${WAIT_SECONDS}s"
		sleep 2
		waited=$((waited + 2))
	done
}

clone_primary() {
	local part=$PGDATA.partial
	rm -rf -- "$part"
	wait_for_primary
	note "pg_basebackup from $PRIMARY_HOST:$PRIMARY_PORT through slot $SLOT"
	PGPASSFILE=$PASSFILE pg_basebackup -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U replicator -w \
		-D "$part" -X stream -S "$SLOT" -R --checkpoint=fast ||
		die "pg_basebackup failed (is the primary up, does slot $SLOT exist?)"
	[[ -f $part/standby.signal ]] || die "pg_basebackup -R wrote no standby.signal"
	write_standby_settings "$part"
	if [[ -d $PGDATA ]]; then
		rmdir -- "$PGDATA" || die "$PGDATA exists and is not an empty directory"
	fi
	mv -- "$part" "$PGDATA"
	note "clone complete: $PGDATA"
}

write_passfile
if [[ ! -s $PGDATA/PG_VERSION ]]; then
	clone_primary
elif [[ -f $PGDATA/standby.signal ]]; then
	write_standby_settings "$PGDATA"
else
	note "$PGDATA has no standby.signal (promoted?): leaving its settings alone"
fi

# The server needs only the passfile.
unset REPLICATION_PASSWORD
exec docker-entrypoint.sh "$@"
