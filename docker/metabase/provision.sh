#!/usr/bin/env bash
# provision.sh: set up Metabase for eds through its REST API. Idempotent:
# run it after `docker compose ... up -d`, again whenever you like.
#
#   1. wait for /api/health;
#   2. first-time setup (/api/setup with the admin from the environment) if
#      Metabase has no user yet;
#   3. log in (/api/session);
#   4. add the warehouse (postgres, warehouse-db:5432/warehouse_db as
#      warehouse_user) unless a database with that name exists;
#   5. create one native-SQL card per query in cards.sql, unless a card with
#      that name exists;
#   6. create the dashboard with those cards, unless it exists (an existing
#      dashboard is left as it is).
#
# Settings come from the environment, else from docker/.env (KEY=VALUE lines):
#   MB_ADMIN_EMAIL, MB_ADMIN_PASSWORD, WAREHOUSE_USER_PASSWORD   (required)
#   MB_URL (http://localhost:3000), MB_ADMIN_FIRST_NAME, MB_ADMIN_LAST_NAME,
#   MB_SITE_NAME, MB_WAREHOUSE_NAME ("eds warehouse"), MB_WAIT_SECONDS (300),
#   EDS_ENV_FILE (docker/.env), EDS_CARDS_FILE (docker/metabase/cards.sql)
# Needs bash, curl, and jq (or python3 for JSON). Metabase 0.47 or newer.
set -Eeuo pipefail

readonly PROG=provision
HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
readonly HERE
readonly DASHBOARD_NAME='eds — loan portfolio'

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
note() { printf '%s: %s\n' "$PROG" "$*" >&2; }

trim() {
	local s=$1
	s=${s#"${s%%[![:space:]]*}"}
	s=${s%"${s##*[![:space:]]}"}
	printf '%s' "$s"
}

# KEY=VALUE lines of the env file, for variables not already set. Values are
# taken literally (no shell evaluation).
load_env_file() {
	local file=$1 line key
	[[ -f $file ]] || return 0
	while IFS= read -r line || [[ -n $line ]]; do
		[[ $line =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
		key=${BASH_REMATCH[1]}
		[[ -n ${!key+set} ]] || export "$key=${BASH_REMATCH[2]}"
	done <"$file"
}

# ---------------------------------------------------------------- JSON
# jq if present, else python3.

json_str() { # STRING -> JSON string literal
	if ((HAVE_JQ)); then
		printf '%s' "$1" | jq -Rs .
	else
		printf '%s' "$1" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))'
	fi
}

json_field() { # KEY < object -> the field as text ("" if missing or null)
	if ((HAVE_JQ)); then
		jq -r --arg k "$1" 'if .[$k] == null then "" else .[$k] | tostring end'
	else
		python3 -c 'import json,sys
v = json.load(sys.stdin).get(sys.argv[1])
print("" if v is None else json.dumps(v) if isinstance(v, (bool, list, dict)) else v)' "$1"
	fi
}

json_id_by_name() { # NAME < list (or {"data": list}) -> id of the item with that name
	if ((HAVE_JQ)); then
		jq -r --arg n "$1" '(if type == "object" then .data else . end)
			| map(select(.name == $n)) | if length > 0 then .[0].id | tostring else "" end'
	else
		python3 -c 'import json,sys
d = json.load(sys.stdin)
d = d["data"] if isinstance(d, dict) else d
ids = [x["id"] for x in d if x.get("name") == sys.argv[1]]
print(ids[0] if ids else "")' "$1"
	fi
}

# ---------------------------------------------------------------- HTTP

# api METHOD PATH [BODY]: the response on stdout; dies on an HTTP error.
# The body goes through stdin and the session through a 0600 file, so no
# password or session id appears on a command line.
api() {
	local method=$1 path=$2 body=${3-} code
	local args=(-sS -X "$method" -o "$TMP/response" -w '%{http_code}'
		-H 'Content-Type: application/json')
	[[ ! -f $TMP/session-header ]] || args+=(-H "@$TMP/session-header")
	if [[ -n $body ]]; then
		code=$(printf '%s' "$body" | curl "${args[@]}" --data-binary @- "$MB_URL$path") ||
			die "$method $path: cannot reach $MB_URL"
	else
		code=$(curl "${args[@]}" "$MB_URL$path") || die "$method $path: cannot reach $MB_URL"
	fi
	if ((code < 200 || code >= 300)); then
		die "$method $path: HTTP $code: $(head -c 400 -- "$TMP/response")"
	fi
	cat -- "$TMP/response"
}

wait_for_metabase() {
	local waited=0
	note "waiting for $MB_URL/api/health"
	until curl -fsS "$MB_URL/api/health" 2>/dev/null | grep -q '"ok"'; do
		((waited < MB_WAIT_SECONDS)) || die "Metabase is not healthy after ${MB_WAIT_SECONDS}s"
		sleep 5
		waited=$((waited + 5))
	done
}

# ---------------------------------------------------------------- steps

setup_if_needed() {
	local props token
	props=$(api GET /api/session/properties)
	if [[ $(json_field has-user-setup <<<"$props") == true ]]; then
		note "Metabase is already set up"
		return 0
	fi
	token=$(json_field setup-token <<<"$props")
	[[ -n $token ]] || die "Metabase is not set up and gave no setup-token"
	api POST /api/setup "$(printf '{"token": %s, "user": {"email": %s, "password": %s, "first_name": %s, "last_name": %s, "site_name": %s}, "prefs": {"site_name": %s, "allow_tracking": false}}' \
		"$(json_str "$token")" "$(json_str "$MB_ADMIN_EMAIL")" "$(json_str "$MB_ADMIN_PASSWORD")" \
		"$(json_str "$MB_ADMIN_FIRST_NAME")" "$(json_str "$MB_ADMIN_LAST_NAME")" \
		"$(json_str "$MB_SITE_NAME")" "$(json_str "$MB_SITE_NAME")")" >/dev/null
	note "first-time setup done (admin $MB_ADMIN_EMAIL)"
}

login() {
	local session
	session=$(api POST /api/session "$(printf '{"username": %s, "password": %s}' \
		"$(json_str "$MB_ADMIN_EMAIL")" "$(json_str "$MB_ADMIN_PASSWORD")")" | json_field id)
	[[ -n $session ]] || die "login as $MB_ADMIN_EMAIL gave no session"
	printf 'X-Metabase-Session: %s\n' "$session" >"$TMP/session-header"
}

ensure_warehouse() { # sets DB_ID
	DB_ID=$(api GET /api/database | json_id_by_name "$MB_WAREHOUSE_NAME")
	if [[ -n $DB_ID ]]; then
		note "database '$MB_WAREHOUSE_NAME' exists (id $DB_ID)"
		return 0
	fi
	DB_ID=$(api POST /api/database "$(printf '{"name": %s, "engine": "postgres", "details": {"host": "warehouse-db", "port": 5432, "dbname": "warehouse_db", "user": "warehouse_user", "password": %s, "ssl": false}}' \
		"$(json_str "$MB_WAREHOUSE_NAME")" "$(json_str "$WAREHOUSE_USER_PASSWORD")")" | json_field id)
	[[ -n $DB_ID ]] || die "adding the warehouse gave no id"
	note "added database '$MB_WAREHOUSE_NAME' (id $DB_ID)"
}

add_card_def() { # NAME DISPLAY QUERY
	local query
	[[ -n $1 ]] || return 0
	query=$(trim "$3")
	query=$(trim "${query%;}")
	[[ -n $query ]] || die "card '$1' in $CARDS_FILE has no query"
	CARD_NAMES+=("$1")
	CARD_DISPLAYS+=("${2:-table}")
	CARD_QUERIES+=("$query")
}

# cards.sql: "-- card: NAME", optional "-- display: TYPE", then the query.
read_cards() {
	local line name='' display='' query=''
	CARD_NAMES=() CARD_DISPLAYS=() CARD_QUERIES=()
	[[ -r $CARDS_FILE ]] || die "cannot read $CARDS_FILE"
	while IFS= read -r line || [[ -n $line ]]; do
		if [[ $line == '-- card:'* ]]; then
			add_card_def "$name" "$display" "$query"
			name=$(trim "${line#-- card:}") display='' query=''
		elif [[ $line == '-- display:'* ]]; then
			display=$(trim "${line#-- display:}")
		elif [[ $line == --* ]]; then
			continue
		elif [[ -n $name ]]; then
			query+=$line$'\n'
		fi
	done <"$CARDS_FILE"
	add_card_def "$name" "$display" "$query"
	((${#CARD_NAMES[@]} > 0)) || die "no cards in $CARDS_FILE"
}

ensure_cards() { # sets CARD_IDS
	local cards i id
	CARD_IDS=()
	cards=$(api GET /api/card)
	for i in "${!CARD_NAMES[@]}"; do
		id=$(json_id_by_name "${CARD_NAMES[i]}" <<<"$cards")
		if [[ -n $id ]]; then
			note "card '${CARD_NAMES[i]}' exists (id $id)"
		else
			id=$(api POST /api/card "$(printf '{"name": %s, "display": %s, "visualization_settings": {}, "dataset_query": {"type": "native", "database": %s, "native": {"query": %s, "template-tags": {}}}}' \
				"$(json_str "${CARD_NAMES[i]}")" "$(json_str "${CARD_DISPLAYS[i]}")" "$DB_ID" \
				"$(json_str "${CARD_QUERIES[i]}")")" | json_field id)
			[[ -n $id ]] || die "creating card '${CARD_NAMES[i]}' gave no id"
			note "created card '${CARD_NAMES[i]}' (id $id)"
		fi
		CARD_IDS+=("$id")
	done
}

# A 24-column grid: numbers 6 wide, tables full width, charts half width.
ensure_dashboard() {
	local id i w h row=0 col=0 row_h=0 dashcards=''
	id=$(api GET /api/dashboard | json_id_by_name "$DASHBOARD_NAME")
	if [[ -n $id ]]; then
		note "dashboard '$DASHBOARD_NAME' exists (id $id): left as it is"
		return 0
	fi
	id=$(api POST /api/dashboard "$(printf '{"name": %s, "description": %s}' \
		"$(json_str "$DASHBOARD_NAME")" \
		"$(json_str 'eds warehouse: loans, revenue, customers, replication lag and ETL runs (docker/metabase/cards.sql)')")" |
		json_field id)
	[[ -n $id ]] || die "creating the dashboard gave no id"
	for i in "${!CARD_IDS[@]}"; do
		case ${CARD_DISPLAYS[i]} in
		scalar) w=6 h=4 ;;
		table) w=24 h=8 ;;
		*) w=12 h=6 ;;
		esac
		if ((col + w > 24)); then
			row=$((row + row_h)) col=0 row_h=0
		fi
		dashcards+="${dashcards:+, }{\"id\": -$((i + 1)), \"card_id\": ${CARD_IDS[i]}, \"row\": $row, \"col\": $col, \"size_x\": $w, \"size_y\": $h, \"parameter_mappings\": [], \"visualization_settings\": {}, \"series\": []}"
		col=$((col + w))
		((h <= row_h)) || row_h=$h
	done
	api PUT "/api/dashboard/$id" "{\"dashcards\": [$dashcards]}" >/dev/null
	note "created dashboard '$DASHBOARD_NAME' (id $id) with ${#CARD_IDS[@]} cards"
}

main() {
	load_env_file "${EDS_ENV_FILE:-$HERE/../.env}"
	: "${MB_ADMIN_EMAIL:?set MB_ADMIN_EMAIL (environment or docker/.env)}"
	: "${MB_ADMIN_PASSWORD:?set MB_ADMIN_PASSWORD (environment or docker/.env)}"
	: "${WAREHOUSE_USER_PASSWORD:?set WAREHOUSE_USER_PASSWORD (environment or docker/.env)}"
	MB_URL=${MB_URL:-http://localhost:3000}
	MB_URL=${MB_URL%/}
	MB_ADMIN_FIRST_NAME=${MB_ADMIN_FIRST_NAME:-eds}
	MB_ADMIN_LAST_NAME=${MB_ADMIN_LAST_NAME:-admin}
	MB_SITE_NAME=${MB_SITE_NAME:-eds}
	MB_WAREHOUSE_NAME=${MB_WAREHOUSE_NAME:-eds warehouse}
	MB_WAIT_SECONDS=${MB_WAIT_SECONDS:-300}
	CARDS_FILE=${EDS_CARDS_FILE:-$HERE/cards.sql}

	command -v curl >/dev/null || die "curl is required"
	HAVE_JQ=0
	if command -v jq >/dev/null; then
		HAVE_JQ=1
	elif ! command -v python3 >/dev/null; then
		die "jq or python3 is required"
	fi
	TMP=$(mktemp -d)
	trap 'rm -rf -- "$TMP"' EXIT

	read_cards
	wait_for_metabase
	setup_if_needed
	login
	ensure_warehouse
	ensure_cards
	ensure_dashboard
	note "done: $MB_URL"
}

main "$@"
