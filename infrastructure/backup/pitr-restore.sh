#!/usr/bin/env bash
# The original backup scripts' path for the PITR helper, kept so their runbook works word for word:
#   ./infrastructure/backup/pitr-restore.sh list
#   ./infrastructure/backup/pitr-restore.sh restore --timestamp "2024-01-15 14:30:00" [--dry-run] [--backup NAME]
# The script itself is deploy/pitr-restore.sh (pgdr underneath); see its --help.
exec "$(dirname "$(readlink -f "$0")")/../../deploy/pitr-restore.sh" "$@"
