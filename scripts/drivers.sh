#!/usr/bin/env bash
# Installs the database drivers of other languages that e2e/postgres/drivers.test.ts runs through the
# sidecar, into a per-machine cache, and links them into .tools/drivers:
#   python          virtualenv with psycopg 3 (psycopg[binary], whose wheel carries its own libpq; when no
#                   wheel fits this machine, pure-Python psycopg on Debian's libpq5)
#   postgresql.jar  the PostgreSQL JDBC driver from Maven Central (Java runs the client as a single-file
#                   source program, so there is no build step)
# Idempotent: with everything present it only checks and prints nothing. The cache is keyed by version
# (and, for the virtualenv, by the Python version), so a fresh clone on the same machine reuses it.
set -euo pipefail

# Exact versions (tools.env style).
PSYCOPG_VERSION=3.3.9
PGJDBC_VERSION=42.7.14
# sha256 of postgresql-$PGJDBC_VERSION.jar; checked after every download.
PGJDBC_SHA256=73914527305a40cce504b0d3d90b23caf565136912d607ae8ae7c5895512332c

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${CHAPERONE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chaperone}/drivers
links="$repo/.tools/drivers"

fail() {
  echo "drivers: $*" >&2
  exit 1
}

missing=()
python=${CHAPERONE_PYTHON:-python3}
command -v "$python" >/dev/null || missing+=("$python (Python 3.10+ with venv; Debian: python3 python3-venv)")
command -v java >/dev/null || missing+=("java (JDK 11+; Debian: openjdk-17-jdk-headless)")
command -v mvn >/dev/null || missing+=("mvn (Debian: maven)")
[[ ${#missing[@]} -eq 0 ]] || fail "missing on PATH: ${missing[*]}"

py_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
  fail "psycopg $PSYCOPG_VERSION needs Python 3.10 or newer; $python is $py_version (set CHAPERONE_PYTHON to another interpreter)"
# Single-file source programs (java Program.java) need the compiler module, which a bare JRE lacks.
java --list-modules 2>/dev/null | grep -q '^jdk.compiler@' ||
  fail "java cannot run source programs (no jdk.compiler module): install a JDK, e.g. Debian's openjdk-17-jdk-headless"

mkdir -p "$cache" "$links"
exec 9>"$cache/.lock"
flock 9

# ---- psycopg ------------------------------------------------------------------------------------

venv="$cache/python-$py_version-psycopg-$PSYCOPG_VERSION"
psycopg_works() { "$1/bin/python" -c 'import psycopg; psycopg.pq.version()' >/dev/null 2>&1; }

if ! psycopg_works "$venv"; then
  echo "drivers: installing psycopg $PSYCOPG_VERSION into $venv" >&2
  tmp="$cache/.python.tmp.$$"
  rm -rf "$tmp" "$tmp.log"
  trap 'rm -rf "$tmp" "$tmp.log"' EXIT
  "$python" -m venv "$tmp" >/dev/null ||
    fail "could not create a virtualenv with $python (Debian: apt-get install python3-venv)"
  pip=("$tmp/bin/python" -m pip install --quiet --disable-pip-version-check --no-input)
  if ! "${pip[@]}" "psycopg[binary]==$PSYCOPG_VERSION" >"$tmp.log" 2>&1; then
    # No binary wheel for this platform: the pure-Python package loads the system libpq instead.
    echo "drivers: psycopg-binary $PSYCOPG_VERSION does not install here; using psycopg with the system libpq" >&2
    "${pip[@]}" "psycopg==$PSYCOPG_VERSION" >>"$tmp.log" 2>&1 ||
      fail "pip could not install psycopg==$PSYCOPG_VERSION from PyPI: $(tail -n 5 "$tmp.log")"
    psycopg_works "$tmp" || fail "psycopg $PSYCOPG_VERSION cannot load libpq: install Debian's libpq5 (apt-get install libpq5)"
  fi
  rm -f "$tmp.log"
  psycopg_works "$tmp" || fail "psycopg $PSYCOPG_VERSION installed but does not import in $tmp"
  # A venv's interpreter finds its packages through pyvenv.cfg next to it, so the directory can move.
  rm -rf "$venv"
  mv "$tmp" "$venv"
  trap - EXIT
  psycopg_works "$venv" || fail "psycopg does not import after moving the virtualenv to $venv"
fi
ln -sfn "$venv" "$links/python"

# ---- PostgreSQL JDBC ----------------------------------------------------------------------------

jar="$cache/postgresql-$PGJDBC_VERSION.jar"
jar_ok() { [[ -f "$1" ]] && echo "$PGJDBC_SHA256  $1" | sha256sum --check --status; }

if ! jar_ok "$jar"; then
  echo "drivers: fetching org.postgresql:postgresql:$PGJDBC_VERSION into $cache" >&2
  tmp="$cache/.jdbc.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  mvn -q -B dependency:copy "-Dartifact=org.postgresql:postgresql:$PGJDBC_VERSION" "-DoutputDirectory=$tmp" \
    >"$tmp/mvn.log" 2>&1 ||
    fail "mvn could not fetch org.postgresql:postgresql:$PGJDBC_VERSION from Maven Central: $(tail -n 5 "$tmp/mvn.log")"
  got="$tmp/postgresql-$PGJDBC_VERSION.jar"
  jar_ok "$got" ||
    fail "postgresql-$PGJDBC_VERSION.jar has sha256 $(sha256sum "$got" | cut -d' ' -f1), expected $PGJDBC_SHA256"
  mv -f "$got" "$jar"
  rm -rf "$tmp"
  trap - EXIT
fi
ln -sfn "$jar" "$links/postgresql.jar"
