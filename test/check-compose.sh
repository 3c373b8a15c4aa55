#!/usr/bin/env bash
# check-compose.sh: static checks of the Docker deployment (docker/), for a
# machine without a Docker engine.
#   1. docker-compose config -q with docker/.env.example (syntax, schema,
#      every ${VAR:?} present);
#   2. bash -n / sh -n on every shell script under docker/;
#   3. no credential value in any file under docker/ except .env.example
#      (and a local docker/.env, which is where real values belong);
#      .env.example holds only change-me placeholders.
# Prints "compose: ok" and exits 0 when all pass.
set -euo pipefail

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."

fail=0
problem() { printf 'check-compose: %s\n' "$*" >&2; fail=1; }

# 1. compose file
if command -v docker-compose >/dev/null; then
	compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
	compose=(docker compose)
else
	printf 'check-compose: neither docker-compose nor docker compose found (apt-get install docker-compose)\n' >&2
	exit 1
fi
if ! out=$("${compose[@]}" --env-file docker/.env.example -f docker/docker-compose.yml config -q 2>&1); then
	problem "compose config failed: $out"
fi

# 2. shell syntax
scripts=()
while IFS= read -r -d '' f; do
	scripts+=("$f")
done < <(find docker -type f \( -name '*.sh' -o -path 'docker/bin/*' \) -print0 | sort -z)
((${#scripts[@]} > 0)) || problem "no shell scripts found under docker/"
for f in "${scripts[@]}"; do
	case $(head -n 1 -- "$f") in
	'#!/bin/sh'*) shell='sh' ;;
	*) shell='bash' ;;
	esac
	if ! out=$("$shell" -n -- "$f" 2>&1); then
		problem "$shell -n $f: $out"
	fi
	# Also bash -n for POSIX scripts (the brief: bash -n on every script).
	if [[ $shell == sh ]] && ! out=$(bash -n -- "$f" 2>&1); then
		problem "bash -n $f: $out"
	fi
done

# 3. credentials. A literal assigned to something named like a password,
# secret or token: KEY=value, KEY: value, "key": "value", password=value in
# a conninfo. References do not count (${VAR}, $VAR, %s, ${VAR:?...}, and
# psql's :'var', which has a space before the colon); nor do names of files
# (passfile=, *_PASSFILE).
secret_re='(password|passwd|_pass|secret|token)[a-z0-9_]*["'\'']?(=|:[[:space:]]*)["'\'']?[A-Za-z0-9@#!*+/._-]'
while IFS= read -r -d '' f; do
	case $f in
	docker/.env.example | docker/.env) continue ;;
	esac
	while IFS= read -r hit; do
		problem "possible credential in $f: line ${hit%%:*}"
	done < <(grep -noiE -- "$secret_re" "$f" | grep -viE '^[0-9]+:[a-z0-9_]*file' || true)
done < <(find docker -type f -print0 | sort -z)

if [[ -f docker/.env.example ]]; then
	while IFS= read -r line; do
		problem "docker/.env.example: not a change-me placeholder: ${line%%=*}=..."
	done < <(grep -E '^[A-Za-z_]*(PASSWORD|PASS|SECRET|TOKEN)[A-Za-z_]*=' docker/.env.example |
		grep -vE '^[A-Za-z_]+=change-me' || true)
else
	problem "docker/.env.example is missing"
fi

if ((fail)); then
	exit 1
fi
echo "compose: ok"
