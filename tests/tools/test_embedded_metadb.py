"""The embedded-Postgres path `make run` takes on a laptop with no database configured."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tools.metadb import DatabaseRole, EmbeddedPostgres, ensure_database, provision_database


@pytest.mark.slow
def test_embedded_postgres_start_migrate_connect_stop_restart(tmp_path: Path) -> None:
    embedded = EmbeddedPostgres(tmp_path / "pgdata")
    server = embedded.start()
    try:
        assert embedded.is_running()
        assert server.host.startswith("/"), "embedded server must listen on a unix socket, not a TCP port"
        ensure_database(server, "airflow")
        env = {
            **os.environ,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": server.sqlalchemy_url("airflow"),
            "AIRFLOW_HOME": str(tmp_path / "home"),
        }
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True
        )
        with psycopg.connect(server.conninfo("airflow")) as conn:
            revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            dag_table = conn.execute("SELECT to_regclass('public.dag')").fetchone()
        assert revision is not None
        assert dag_table == ("dag",)
    finally:
        embedded.stop()
    assert not embedded.is_running()

    # A restart keeps the data: the migrated schema is still there.
    server = embedded.start()
    try:
        with psycopg.connect(server.conninfo("airflow")) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == revision
    finally:
        embedded.stop()


@pytest.mark.slow
def test_embedded_roles_need_their_password_and_reach_only_their_database(tmp_path: Path) -> None:
    embedded = EmbeddedPostgres(tmp_path / "pgdata")
    superuser = embedded.start()
    try:
        metadata = provision_database(superuser, "airflow", DatabaseRole("airflow_metadata", "m-secret"))
        warehouse = provision_database(superuser, "warehouse", DatabaseRole("warehouse_rw", "w-secret"))
        with psycopg.connect(warehouse.conninfo("warehouse")) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("warehouse_rw",)
        for wrong in (
            dataclasses.replace(warehouse, password="guess"),
            dataclasses.replace(warehouse, password=None),
        ):
            with pytest.raises(psycopg.OperationalError, match="password authentication failed|no password"):
                psycopg.connect(wrong.conninfo("warehouse")).close()
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            psycopg.connect(warehouse.conninfo("airflow")).close()
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            psycopg.connect(metadata.conninfo("warehouse")).close()
        hba = (embedded.pgdata / "pg_hba.conf").read_text()
        assert "trust" not in hba
        assert "scram-sha-256" in hba
    finally:
        embedded.stop()
