"""What a task can do with its database connection, on a real Postgres: the warehouse and nothing more.

The task's connection is Airflow connection `warehouse` exactly as the test session configures it
(tests/conftest.py: the role that owns the session's warehouse database, as `make run` uses
`warehouse_rw`), opened through batchkit's WarehouseHook as task code opens it.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors
from sqlalchemy.engine import make_url

from batchkit.hooks.warehouse import WarehouseHook
from tools.metadb import PgServer


@pytest.fixture
def task_connection() -> Iterator[psycopg.Connection]:
    with WarehouseHook().autocommit_connection() as conn:
        yield conn


def test_the_task_role_has_no_server_wide_powers(task_connection: psycopg.Connection) -> None:
    role = task_connection.execute(
        """
        SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls
          FROM pg_roles WHERE rolname = current_user
        """
    ).fetchone()
    assert role[1:] == (False, False, False, False, False), role
    granted = task_connection.execute(
        "SELECT array_agg(b.rolname) FROM pg_auth_members m JOIN pg_roles b ON b.oid = m.roleid "
        "WHERE m.member = current_user::regrole"
    ).fetchone()[0]
    assert granted is None, f"{role[0]} is a member of {granted}"


def test_the_task_role_cannot_run_programs_on_the_server(task_connection: psycopg.Connection) -> None:
    with pytest.raises(errors.InsufficientPrivilege):
        task_connection.execute("COPY (SELECT 1) TO PROGRAM 'id'")
    with pytest.raises(errors.InsufficientPrivilege):
        task_connection.execute("COPY (SELECT 1) TO '/tmp/least-privilege-probe'")


def test_the_task_role_cannot_create_roles_or_databases(task_connection: psycopg.Connection) -> None:
    with pytest.raises(errors.InsufficientPrivilege):
        task_connection.execute("CREATE ROLE least_privilege_probe SUPERUSER")
    with pytest.raises(errors.InsufficientPrivilege):
        task_connection.execute("CREATE DATABASE least_privilege_probe")


def test_the_task_role_cannot_reach_the_metadata_db(
    task_connection: psycopg.Connection, airflow_db: str, pg_server: PgServer
) -> None:
    metadata_db = make_url(airflow_db).database
    with psycopg.connect(pg_server.conninfo(metadata_db)) as superuser:
        assert superuser.execute("SELECT to_regclass('public.dag_run')").fetchone()[0] == "dag_run"
    info = task_connection.info
    as_task_role = psycopg.conninfo.make_conninfo(
        host=info.host, port=info.port, user=info.user, password=info.password, dbname=metadata_db
    )
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(as_task_role, connect_timeout=10).close()
    # Nor from inside the warehouse: dblink, where the server has it, needs a superuser to install.
    if task_connection.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'dblink'").fetchone():
        with pytest.raises(errors.InsufficientPrivilege):
            task_connection.execute("CREATE EXTENSION dblink")


def test_the_task_role_owns_the_warehouse_and_loads_into_it(task_connection: psycopg.Connection) -> None:
    """The load path creates its schemas and tables at task time: the role must be able to."""
    owner = task_connection.execute(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
    ).fetchone()[0]
    assert owner == task_connection.info.user
    with task_connection.transaction():
        task_connection.execute("CREATE SCHEMA IF NOT EXISTS least_privilege_probe")
        task_connection.execute("CREATE TABLE least_privilege_probe.t (id int PRIMARY KEY)")
        with task_connection.cursor().copy("COPY least_privilege_probe.t (id) FROM STDIN") as copy:
            copy.write_row((1,))
        assert task_connection.execute("SELECT count(*) FROM least_privilege_probe.t").fetchone()[0] == 1
        task_connection.execute("DROP SCHEMA least_privilege_probe CASCADE")
