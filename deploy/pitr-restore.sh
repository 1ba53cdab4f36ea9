#!/usr/bin/env bash
# The original backup scripts' point-in-time recovery helper, as a thin layer over pgdr:
#
#   pitr-restore.sh list
#   pitr-restore.sh restore --timestamp "2024-01-15 14:30:00" [--dry-run] [--backup NAME]
#
# `list` prints the original helper's sections, "Base Backups:" and "WAL Archive Range:", from
# `pgdr list --json`, then the windows a --timestamp can reach, from `pgdr timeline --json`. `restore`
# is `pgdr restore` with the same words; any other `pgdr restore` option passes through (--yes, --tz,
# --target-dir, --latest, --xid, --json, ...). A timestamp without an offset is read in pgdr's
# [restore] timezone (UTC unless set), not the shell's: `date -u` writes one.
#
# Options (before the command): --config PATH   pgdr's config file (else $PGDR_CONFIG, pgdr's defaults)
# Environment:
#   PGDR          the pgdr command (default: pgdr on PATH, else the .venv/bin/pgdr of the checkout this
#                 script is in). Several words are allowed, e.g. pgdr in a container:
#                 PGDR="docker compose -f docker-compose.yml -f docker-compose.backup.yml run --rm -T --entrypoint pgdr postgres-backup"
#   PGDR_PYTHON   the Python that formats `list` (default: python3; only the standard library)
#   PGDR_STOP_AFTER_RESTORE
#                 set in the postgres image (Dockerfile.postgres): a restore there runs in a one-off
#                 container while the postgres service is stopped, so after it the new timeline's
#                 history file is archived and the server the restore started is stopped, for the
#                 service to take over with its own settings.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "pitr-restore.sh: $*" >&2; exit 2; }

config=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config=(--config "${2:?pitr-restore.sh: --config needs a path}"); shift 2 ;;
    --config=*) config=(--config "${1#--config=}"); shift ;;
    -h|--help|help) usage; exit 0 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { usage >&2; exit 2; }
verb="$1"
shift

here="$(cd "$(dirname "$(readlink -f "$0")")" && pwd)"
if [ -n "${PGDR:-}" ]; then
  read -r -a pgdr <<<"$PGDR"
elif command -v pgdr >/dev/null 2>&1; then
  pgdr=(pgdr)
elif [ -x "$here/../.venv/bin/pgdr" ]; then
  pgdr=("$here/../.venv/bin/pgdr")
else
  die "pgdr not found: put it on PATH or set PGDR (see --help)"
fi

list_recovery_points() {
  local python="${PGDR_PYTHON:-python3}"
  command -v "$python" >/dev/null 2>&1 || die "$python not found: set PGDR_PYTHON to a Python 3"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "${pgdr[@]}" "${config[@]}" list --json "$@" >"$tmp/list.json"
  "${pgdr[@]}" "${config[@]}" timeline --json "$@" >"$tmp/timeline.json"
  "$python" - "$tmp/list.json" "$tmp/timeline.json" <<'PY'
import json
import sys
from datetime import UTC, datetime

catalog = json.load(open(sys.argv[1]))
timeline = json.load(open(sys.argv[2]))


def at(text):
    return datetime.fromisoformat(text).astimezone(UTC)


def when(text):
    return at(text).strftime("%Y-%m-%d %H:%M:%S")


def size(n):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f}{unit}" if unit == "B" or n >= 10 else f"{n:.1f}{unit}"
        n /= 1000
    return ""


print("Base Backups:")
physical = [b for b in catalog.get("backups", []) if b.get("kind") == "physical"]
for b in sorted(physical, key=lambda b: at(b["start_time"]), reverse=True):
    print(f"  {when(b['start_time'])} - {b['name']} ({size(b['size_bytes'])})")
if not physical:
    print("  none yet: take one with `pgdr backup`")
print()

print("WAL Archive Range:")
ranges = catalog.get("wal", [])
if ranges:
    per_repository = {}
    for r in ranges:
        per_repository[r["repository"]] = per_repository.get(r["repository"], 0) + r["segments"]
    total = f"{max(per_repository.values()):,}"
    if len(per_repository) > 1:
        total += " (" + ", ".join(f"{name}: {count:,}" for name, count in per_repository.items()) + ")"
    print(f"  Oldest: {when(min((r['start_time'] for r in ranges), key=at))} UTC")
    print(f"  Newest: {when(max((r['end_time'] for r in ranges), key=at))} UTC")
    print(f"  Total WAL files: {total}")
else:
    print("  none yet: set archive_command = 'pgdr wal-push %p'")
    print("  Total WAL files: 0")
print()

print("Recovery Windows (restore --timestamp within one, UTC):")
windows = sorted(timeline.get("windows", []), key=lambda w: at(w["start"]))
for w in windows:
    print(f"  {when(w['start'])} .. {when(w['end'])}  timeline {w['timeline']}, from backup {w['base_backup']}")
for g in timeline.get("gaps", []):
    print(f"  GAP on timeline {g['timeline']}: WAL {g['missing_from']} .. {g['missing_to']} missing")
if not windows:
    print("  none yet: a base backup and the WAL archived after it make one")
PY
}

restore() {
  local dry_run=0 arg rc=0
  for arg in "$@"; do
    [ "$arg" = "--dry-run" ] && dry_run=1
  done
  local stop_after=0
  if [ -n "${PGDR_STOP_AFTER_RESTORE:-}" ] && [ "$dry_run" -eq 0 ]; then
    stop_after=1
    [ "$(id -u)" -ne 0 ] || die "run the restore as the postgres user: docker compose ... run --rm --no-deps --user postgres postgres pitr-restore.sh restore ..."
    [ -n "${PGDATA:-}" ] || die "PGDATA is not set: run this in the postgres service's image"
  fi
  # In the postgres image the server's user and database are the entrypoint's.
  if [ -n "${PGDR_STOP_AFTER_RESTORE:-}" ]; then
    [ -n "${PGUSER:-}" ] || [ -z "${POSTGRES_USER:-}" ] || export PGUSER="$POSTGRES_USER"
    [ -n "${PGDATABASE:-}" ] || [ -z "${POSTGRES_DB:-}" ] || export PGDATABASE="$POSTGRES_DB"
  fi
  "${pgdr[@]}" "${config[@]}" restore "$@" || rc=$?
  if [ "$stop_after" -eq 1 ] && { [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ]; }; then
    local history
    for history in "$PGDATA"/pg_wal/*.history; do
      [ -e "$history" ] || continue
      "${pgdr[@]}" "${config[@]}" wal-push "$history" || rc=$?
    done
    if pg_ctl status -D "$PGDATA" >/dev/null 2>&1; then
      pg_ctl stop -D "$PGDATA" -m fast -w >/dev/null || rc=$?
      echo "stopped the restored server: start the postgres service (docker compose up -d postgres)"
    fi
  fi
  return "$rc"
}

case "$verb" in
  list) list_recovery_points "$@" ;;
  restore) restore "$@" ;;
  *) die "unknown command $verb: use list or restore (see --help)" ;;
esac
