#!/usr/bin/env bash
# Install pgdr and what it needs. One script for every place pgdr is installed: the README's
# set-up command, the test command (.ci/run) and the Docker image all call it.
#
#   bash deploy/install.sh          PostgreSQL programs (apt, as root) + .venv with pgdr
#   bash deploy/install.sh --dev    the same plus the test and lint tools
#
# The venv is made from Debian's /usr/bin/python3 (world-readable), so PostgreSQL's archive_command,
# running as the postgres user, can execute .venv/bin/pgdr. Re-running it is quick: it skips what
# is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
PG_MAJOR="${PG_MAJOR:-15}"

if [ ! -x "/usr/lib/postgresql/$PG_MAJOR/bin/pg_basebackup" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: PostgreSQL $PG_MAJOR programs are missing; run as root or: sudo apt-get install postgresql-$PG_MAJOR" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-$PG_MAJOR" >/dev/null
fi

PYTHON="${PYTHON:-/usr/bin/python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=".install-stamp"
want="$(cat pyproject.toml | sha256sum | cut -c1-16)$extra"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extra"
  echo "$want" > "$stamp"
fi
