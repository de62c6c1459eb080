#!/usr/bin/env bash
# Least-privilege roles and databases for docker-compose.yaml (docs/docker.md, SECURITY.md).
#
# The postgres image runs this once, as its superuser, when it initialises an empty data volume. The
# superuser's password (POSTGRES_PASSWORD) stays in the postgres service; every other service connects
# as one of these LOGIN roles, whose passwords the postgres service receives from .env:
#
#   role            owns database    used by
#   airflow         airflow          Airflow components (metadata DB), airflow-init, airflow-db-clean
#   warehouse       warehouse        the `warehouse` connection, i.e. task code
#   celery_results  celery_results   Celery's result backend (scheduler, workers, flower; celery profile)
#
# None of them is a superuser or may create roles or databases. CONNECT on each database is revoked from
# PUBLIC and granted to its owner only, so the warehouse role (what tasks hold) cannot even open the
# metadata DB. Passwords travel as psql variables (:'name' quotes them as SQL literals): no password is
# written in this file.
set -euo pipefail

for name in POSTGRES_PASSWORD AIRFLOW_DB_PASSWORD WAREHOUSE_DB_PASSWORD CELERY_RESULTS_DB_PASSWORD; do
    if [[ -z "${!name:-}" || "${!name}" == *change-me* ]]; then
        echo "postgres-init: set $name in .env (see .env.example), then \`docker compose down -v\`" >&2
        exit 1
    fi
done

psql --no-psqlrc -v ON_ERROR_STOP=1 \
    --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" \
    -v airflow_password="$AIRFLOW_DB_PASSWORD" \
    -v warehouse_password="$WAREHOUSE_DB_PASSWORD" \
    -v celery_results_password="$CELERY_RESULTS_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password'
    NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS;
CREATE ROLE warehouse LOGIN PASSWORD :'warehouse_password'
    NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS;
CREATE ROLE celery_results LOGIN PASSWORD :'celery_results_password'
    NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS;

-- Airflow's metadata database: only the airflow role may connect.
CREATE DATABASE airflow OWNER airflow;
REVOKE CONNECT ON DATABASE airflow FROM PUBLIC;
GRANT CONNECT ON DATABASE airflow TO airflow;

-- Where the automations write (Airflow connection `warehouse`): only the warehouse role may connect.
CREATE DATABASE warehouse OWNER warehouse;
REVOKE CONNECT ON DATABASE warehouse FROM PUBLIC;
GRANT CONNECT ON DATABASE warehouse TO warehouse;

-- Celery task results (`--profile celery`): never the metadata DB, so workers need no Airflow role.
CREATE DATABASE celery_results OWNER celery_results;
REVOKE CONNECT ON DATABASE celery_results FROM PUBLIC;
GRANT CONNECT ON DATABASE celery_results TO celery_results;

-- The superuser's own database is for the postgres service alone.
REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;

-- In each database, the public schema belongs to the database's role, and nobody else may create in it
-- (the warehouse role creates its own schemas: batch_meta, targets, reports).
\connect airflow
ALTER SCHEMA public OWNER TO airflow;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
\connect warehouse
ALTER SCHEMA public OWNER TO warehouse;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
\connect celery_results
ALTER SCHEMA public OWNER TO celery_results;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
SQL
