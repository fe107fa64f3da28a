#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks use, when they are missing:
#   postgresql (server, psql, pgbench), pgbouncer (benchmark yardstick).
# Idempotent: with everything present it only checks and prints nothing.
set -euo pipefail

missing=()
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[[ -n "$pg_bin" && -x "$pg_bin/initdb" && -x "$pg_bin/postgres" ]] || missing+=(postgresql)
command -v psql >/dev/null || missing+=(postgresql-client)
command -v pgbench >/dev/null || missing+=(postgresql-contrib)
[[ -x /usr/sbin/pgbouncer ]] || command -v pgbouncer >/dev/null || missing+=(pgbouncer)
command -v openssl >/dev/null || missing+=(openssl)

[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then sudo=(sudo); else
    echo "debian-packages: missing ${missing[*]}; run as root or install them: apt-get install ${missing[*]}" >&2
    exit 1
  fi
else sudo=(); fi
command -v apt-get >/dev/null || { echo "debian-packages: missing ${missing[*]} and no apt-get on this machine" >&2; exit 1; }

echo "debian-packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian packages start system services; the tests run their own throwaway servers instead.
for svc in postgresql pgbouncer; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then "${sudo[@]}" systemctl stop "$svc" || true; fi
  if command -v service >/dev/null; then "${sudo[@]}" service "$svc" stop >/dev/null 2>&1 || true; fi
done
