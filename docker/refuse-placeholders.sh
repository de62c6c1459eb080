#!/usr/bin/env bash
# Entrypoint wrapper of the Airflow services in docker-compose.yaml: refuse to start while any variable
# this container received still holds the `change-me` placeholder of .env.example, naming the variables
# (never their values), then hand over to the image's own entrypoint: `refuse-placeholders.sh /entrypoint ARGS`.
# Each service receives only its own secrets (SECURITY.md), so each checks its own.
set -eu
placeholders=$(env | grep change-me | cut -d= -f1 || true)
if [ -n "$placeholders" ]; then
    echo "$(hostname): replace the change-me placeholders in .env (see .env.example):" >&2
    echo "$placeholders" >&2
    exit 1
fi
exec "$@"
