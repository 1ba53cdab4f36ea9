#!/usr/bin/env bash
# Install pgdr and what it needs. One script for every place pgdr is installed: the README's set-up
# command, the test command (.ci/run), both Docker images (deploy/docker/Dockerfile and
# Dockerfile.postgres) and a systemd host all call it, so they all get the same programs.
#
#   bash deploy/install.sh          PostgreSQL programs (apt, as root) + .venv with pgdr (editable)
#   bash deploy/install.sh --dev    the same plus the test and lint tools
#   bash deploy/install.sh --venv /opt/pgdr --link /usr/local/bin
#                                   a self-contained copy (not editable) in /opt/pgdr, with pgdr
#                                   linked into /usr/local/bin: the Docker images and systemd hosts
#
# Options:
#   --dev          also the [dev] extras (pytest, moto, ruff, mypy, podman-compose) and, as root,
#                  podman from apt for the Quick Start test (tests/test_quickstart.py)
#   --bench        --dev plus the benchmark's anchors from apt: pgbackrest, barman-cli-cloud, zstd
#   --venv DIR     the venv to install into (default: .venv in this checkout, editable install)
#   --link DIR     symlink DIR/pgdr to the venv's pgdr
#   --no-apt       never call apt-get: fail if a PostgreSQL program or Python's venv is missing
#   --print-plan   only print what would be installed and whether an apt source would be added
#                  (changes nothing, needs no root)
# Environment:
#   PG_MAJOR       PostgreSQL major version whose programs pgdr uses (default 15); a version the
#                  configured apt sources lack comes from apt.postgresql.org (PGDG)
#   PYTHON         the interpreter the venv is made from (default /usr/bin/python3)
#
# The venv is made from Debian's /usr/bin/python3 (world-readable), so PostgreSQL's archive_command,
# running as the postgres user, can execute its pgdr. Re-running the default install is quick: it
# skips what is already in place.
set -euo pipefail
caller="$(pwd)"
cd "$(dirname "$0")/.."
root="$(pwd)"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

extra=""
bench=0
venv=""
link=""
apt=1
plan=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) extra="[dev]" ;;
    --bench) extra="[dev]"; bench=1 ;;
    --venv) venv="${2:?install.sh: --venv needs a directory}"; shift ;;
    --venv=*) venv="${1#--venv=}" ;;
    --link) link="${2:?install.sh: --link needs a directory}"; shift ;;
    --link=*) link="${1#--link=}" ;;
    --no-apt) apt=0 ;;
    --print-plan) plan=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see: bash deploy/install.sh --help)" >&2; exit 2 ;;
  esac
  shift
done

absolute() { case "$1" in /*) echo "$1" ;; *) echo "$caller/$1" ;; esac; }
[ -n "$venv" ] && venv="$(absolute "$venv")"
[ -n "$link" ] && link="$(absolute "$link")"
PG_MAJOR="${PG_MAJOR:-15}"
PYTHON="${PYTHON:-/usr/bin/python3}"
pg_bin="/usr/lib/postgresql/$PG_MAJOR/bin"

# --- system packages -------------------------------------------------------------------------------
# pgdr runs pg_basebackup, pg_dump, pg_restore, pg_verifybackup (client package) and pg_waldump,
# pg_ctl, postgres (server package: restores and restore rehearsals).
packages=()
for program in pg_basebackup pg_dump pg_restore pg_verifybackup pg_waldump pg_ctl postgres; do
  if [ ! -x "$pg_bin/$program" ]; then
    packages+=("postgresql-$PG_MAJOR")
    break
  fi
done
if [ "$bench" -eq 1 ]; then
  for program in pgbackrest barman-cloud-wal-archive zstd; do
    command -v "$program" >/dev/null || packages+=("$( [ "$program" = barman-cloud-wal-archive ] && echo barman-cli-cloud || echo "$program")")
  done
fi
# --dev as root: rootful podman for tests/test_quickstart.py, which builds both Docker images and runs
# the README's Quick Start with podman-compose (a dev dependency, from PyPI): the engine, runc (crun
# refuses these machines' hybrid cgroups), netavark and aardvark-dns (the compose network, its service
# names), catatonit (`init: true`), iptables, and mmdebstrap, which builds the test's stand-in
# debian:bookworm-slim (no image registry is reachable). Not as another user: that test needs root.
if [ -n "$extra" ] && [ "$(id -u)" -eq 0 ] && command -v dpkg-query >/dev/null; then
  for package in podman runc netavark aardvark-dns catatonit iptables mmdebstrap; do
    [[ "$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)" == "install ok installed" ]] \
      || packages+=("$package")
  done
fi
if [ ! -x "${venv:-$root/.venv}/bin/python" ] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  packages+=(python3 python3-venv)
fi

# The PostgreSQL package comes from the configured apt sources when they carry it (Debian 12: 15), else
# from apt.postgresql.org (PGDG), which is then added. apt-cache's answer is read whole before it is
# matched: `apt-cache policy | grep -q` under pipefail fails with SIGPIPE when grep stops reading early.
pg_package="postgresql-$PG_MAJOR"
in_apt_sources() {
  local policy
  policy="$(apt-cache policy "$1" 2>/dev/null || true)"
  [[ "$policy" == *"Candidate: "[0-9]* ]]
}
needs_pgdg() { [[ " ${packages[*]} " == *" $pg_package "* ]] && ! in_apt_sources "$pg_package"; }

if [ "$plan" -eq 1 ]; then
  echo "install: ${packages[*]:-nothing}"
  if in_apt_sources "$pg_package"; then
    echo "$pg_package from: the configured apt sources"
  else
    echo "$pg_package from: apt.postgresql.org"
  fi
  if needs_pgdg; then echo "add apt source: apt.postgresql.org"; else echo "add apt source: none"; fi
  exit 0
fi

if [ ${#packages[@]} -gt 0 ]; then
  if [ "$apt" -eq 0 ]; then
    echo "install.sh: missing ${packages[*]} (--no-apt): install them, or run without --no-apt as root" >&2
    exit 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: ${packages[*]} missing; run as root or: sudo apt-get install ${packages[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if needs_pgdg; then
    # Not in the configured sources (Debian 12 carries 15 only): add apt.postgresql.org with the
    # script and signing key postgresql-common ships.
    apt-get install -y -qq --no-install-recommends postgresql-common ca-certificates >/dev/null
    /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y >/dev/null
  fi
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

# --- the venv and pgdr -----------------------------------------------------------------------------
if [ -z "$venv" ]; then
  # The checkout's .venv, editable: the developer's, the README's and CI's install.
  if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
  fi
  stamp=".install-stamp"
  want="$(sha256sum < pyproject.toml | cut -c1-16)$extra-compat"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    # compat mode: a plain .pth path entry instead of an import hook, which would cost every
    # `pgdr wal-push` (run once per WAL segment) about 15 ms of start-up.
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extra" \
      --config-settings editable_mode=compat
    echo "$want" > "$stamp"
  fi
  venv="$root/.venv"
else
  # A self-contained copy (images, servers): the checkout can be deleted afterwards.
  if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$root$extra"
fi

if [ -n "$link" ]; then
  mkdir -p "$link"
  ln -sfn "$venv/bin/pgdr" "$link/pgdr"
fi
"$venv/bin/pgdr" --version >/dev/null
