#!/usr/bin/env bash
# Run by the postgres image's entrypoint when it initialises an empty data directory (a file in
# /docker-entrypoint-initdb.d). The entrypoint itself only allows `host all all all <method>`, which
# does not cover replication connections: pg_basebackup (pgdr backup) from the postgres-backup
# container needs this line too. For a database initialised before pgdr, add it by hand (README.md, "Deployment").
set -euo pipefail
method="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
printf '\n# pgdr: base backups from the postgres-backup container\nhost replication all all %s\n' "$method" \
  >> "$PGDATA/pg_hba.conf"
