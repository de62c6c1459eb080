"""airflow_settings.yaml and tools.airflow_settings: validation in-process, applies through the CLI into
this pytest process's real metadata database."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from cryptography.fernet import Fernet
from psycopg import sql

from tools.airflow_settings import SettingsError, load_settings
from tools.metadb import REPO_ROOT, PgServer

REPO_SETTINGS = REPO_ROOT / "airflow_settings.yaml"
# What `make run` exports for the repo file; the values are test fixtures, not real credentials.
REPO_ENV = {
    "WAREHOUSE_HOST": "127.0.0.1",
    "WAREHOUSE_PORT": "5432",
    "WAREHOUSE_USER": "warehouse_rw",
    "WAREHOUSE_PASSWORD": "warehouse-test-password",
    "WAREHOUSE_DB": "warehouse",
    "DEMO_API_URL": "http://127.0.0.1:8081",
    "DEMO_API_TOKEN": "demo-test-token",
}
# The metadata table of each section, its id column, and the file's key for that id. The repo file's
# inventory is read from the file, never pinned here: declaring a connection, pool or variable (as
# CONTRIBUTING says to for a new source) must not break these tests; the rules below check it instead.
SECTIONS = {
    "connection": ("conn_id", "connections", "conn_id"),
    "slot_pool": ("pool", "pools", "pool_name"),
    "variable": ("key", "variables", "variable_name"),
}
# The key the applier encrypts passwords, extras and variables with, so the tests can read them back.
FERNET_KEY = Fernet.generate_key().decode()
SECRET_KEY = re.compile(r"password|secret|token|api[_-]?key|authorization", re.I)
BARE_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-)?\}")


def repo_document() -> dict[str, Any]:
    return yaml.safe_load(REPO_SETTINGS.read_text())["airflow"]


def repo_ids(table: str) -> list[str]:
    """The ids the repo file declares for one metadata table (connection, slot_pool, variable)."""
    _, section, key = SECTIONS[table]
    return [entry[key] for entry in repo_document().get(section) or []]


def write_settings(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


def run_cli(command: str, path: Path, **env_overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **REPO_ENV, "AIRFLOW__CORE__FERNET_KEY": FERNET_KEY, **env_overrides}
    env.pop("ALERTS_WEBHOOK_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "tools.airflow_settings", command, str(path)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def problems_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(SettingsError) as raised:
        load_settings(path, env or {})
    return raised.value.problems


# --- the repo's file ---------------------------------------------------------------------------------


def test_repo_file_resolves_from_the_environment() -> None:
    settings = load_settings(REPO_SETTINGS, {**REPO_ENV, "WAREHOUSE_PASSWORD": ""})
    connections = {c.conn_id: c for c in settings.entries["connections"]}
    assert connections["warehouse"].row_values() == {
        "conn_type": "postgres",
        "host": "127.0.0.1",
        "schema": "warehouse",
        "login": "warehouse_rw",
        "password": None,  # ${WAREHOUSE_PASSWORD:-} with an empty value: no password (trust auth)
        "port": 5432,
        "extra": None,
    }
    assert connections["demo_api"].conn_password == "demo-test-token"
    assert connections["demo_api"].conn_extra == {"timeout": 30, "requests_per_second": 5}
    assert connections["alerts_webhook"].conn_host == "http://127.0.0.1:8081/alerts"
    pools = {p.pool_name: p.pool_slot for p in settings.entries["pools"]}
    assert (pools["demo_api"], pools["warehouse"]) == (2, 4)
    variables = {v.variable_name: v.variable_value for v in settings.entries["variables"]}
    assert variables["batch_alert_dedup_minutes"] == "60"
    # ${ALERTS_EMAIL_TO:-}: nobody, so tier:3 falls back to the pager.
    assert variables["batch_alert_email_to"] == ""
    # Every entry of the file resolved, whatever the file declares.
    assert sorted(connections) == sorted(repo_ids("connection"))
    assert sorted(pools) == sorted(repo_ids("slot_pool"))
    assert sorted(variables) == sorted(repo_ids("variable"))
    # Slack, email and the reports' Slack are off until their token/host is set (skipped, not errors).
    assert connections["alerts_slack"].conn_password is None
    assert connections["alerts_smtp"].conn_host is None
    assert connections["reports_webhook"].conn_host != connections["alerts_webhook"].conn_host


def test_repo_file_writes_no_secret_inline() -> None:
    """Read independently of the tool's own rule: every secret-looking value is a bare ${VAR}."""

    def secret_values(node: Any) -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "conn_password" or SECRET_KEY.search(str(key)):
                    yield key, value
                yield from secret_values(value)
        elif isinstance(node, list):
            for item in node:
                yield from secret_values(item)

    document = yaml.safe_load(REPO_SETTINGS.read_text())
    found = list(secret_values(document))
    with_password = [c for c in document["airflow"]["connections"] if "conn_password" in c]
    assert [key for key, _ in found].count("conn_password") == len(with_password) >= 1
    for key, value in found:
        assert isinstance(value, str), f"{key} holds a literal: {value!r}"
        assert BARE_REFERENCE.fullmatch(value), f"{key} holds a literal: {value!r}"


def test_every_repo_entry_is_complete() -> None:
    """Rules for any entry, present or future: a connection type, pool slots with a description."""
    document = repo_document()
    for connection in document["connections"]:
        assert connection.get("conn_type"), f"connection {connection['conn_id']} has no conn_type"
    for pool in document["pools"]:
        assert isinstance(pool.get("pool_slot"), int), pool
        assert pool["pool_slot"] >= 1, pool
        assert pool.get("pool_description"), f"pool {pool['pool_name']} has no pool_description"
    for table in SECTIONS:
        ids = repo_ids(table)
        assert len(ids) == len(set(ids)), f"{table}: duplicate ids in {ids}"


@pytest.fixture(scope="module")
def repo_dags() -> list[Any]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=REPO_ROOT / "dags")
    assert not bag.import_errors, bag.import_errors
    assert bag.dags, "no DAGs parsed: nothing to check against the settings file"
    return list(bag.dags.values())


def used_connections_and_pools(dags: list[Any]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """conn_id -> and pool -> who uses it: every sync file, every DAG task, the alert and report routes."""
    import batchkit.alert_channels
    import batchkit.alerts
    from batchkit.sync_spec import automations_dir, load_spec

    connections: dict[str, set[str]] = {}
    pools: dict[str, set[str]] = {}
    for path in sorted(automations_dir().glob("*.yaml")):
        spec = load_spec(path)
        where = f"include/automations/{path.name}"
        for field, conn_id in (
            ("source.conn_id", spec.source.conn_id),
            ("target.conn_id", spec.target.conn_id),
            ("alerts.webhook_conn_id", spec.alerts.webhook_conn_id),
            ("alerts.slack_conn_id", spec.alerts.slack_conn_id),
            ("alerts.smtp_conn_id", spec.alerts.smtp_conn_id),
        ):
            connections.setdefault(conn_id, set()).add(f"{where} {field}")
        for field, pool in (("source.pool", spec.source.pool), ("target.pool", spec.target.pool)):
            pools.setdefault(pool, set()).add(f"{where} {field}")
    for dag in dags:
        for task in dag.tasks:
            where = f"{dag.dag_id}.{task.task_id}"
            if task.pool != "default_pool":
                pools.setdefault(task.pool, set()).add(where)
            for attribute in dir(task):
                if attribute.endswith("conn_id") and not attribute.startswith("_"):
                    value = getattr(task, attribute, None)
                    if isinstance(value, str) and value:
                        connections.setdefault(value, set()).add(f"{where}.{attribute}")
    for module in (batchkit.alerts, batchkit.alert_channels):
        for name, value in vars(module).items():
            if name.endswith("_CONN_ID") and isinstance(value, str):
                connections.setdefault(value, set()).add(f"{module.__name__}.{name}")
    return connections, pools


def test_every_connection_and_pool_in_use_is_declared(repo_dags: list[Any]) -> None:
    connections, pools = used_connections_and_pools(repo_dags)
    # The rule must have something to check: the syncs' source and warehouse connections and pools.
    assert {"warehouse", "demo_api"} <= set(connections)
    assert {"warehouse", "demo_api"} <= set(pools)

    undeclared_connections = {
        c: sorted(users) for c, users in connections.items() if c not in repo_ids("connection")
    }
    undeclared_pools = {p: sorted(users) for p, users in pools.items() if p not in repo_ids("slot_pool")}
    assert undeclared_connections == {}, (
        f"used but not declared in airflow_settings.yaml: {undeclared_connections}"
    )
    assert undeclared_pools == {}, f"used but not declared in airflow_settings.yaml: {undeclared_pools}"


def test_the_rules_catch_an_undeclared_connection_and_pool(repo_dags: list[Any], tmp_path: Path) -> None:
    """A sync naming a connection and pool the settings file lacks is what the rule above reports."""
    include = tmp_path / "include"
    include.mkdir()
    for folder in ("contracts", "sql"):
        (include / folder).symlink_to(REPO_ROOT / "include" / folder)
    (include / "automations").mkdir()
    document = yaml.safe_load((REPO_ROOT / "include/automations/sales_orders_sync.yaml").read_text())
    document["dag_id"] = "sales_probe_sync"
    document["source"].update(conn_id="probe_api", pool="probe_api")
    (include / "automations" / "sales_probe_sync.yaml").write_text(yaml.safe_dump(document))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BATCHKIT_INCLUDE_DIR", str(include))
        connections, pools = used_connections_and_pools(repo_dags)

    assert "probe_api" not in repo_ids("connection")
    assert connections["probe_api"] == {"include/automations/sales_probe_sync.yaml source.conn_id"}
    assert pools["probe_api"] == {"include/automations/sales_probe_sync.yaml source.pool"}


def test_check_validates_the_repo_file_without_a_database() -> None:
    # A metadata DB nobody listens on: `check` must not need one.
    result = run_cli(
        "check",
        REPO_SETTINGS,
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg2://nobody@127.0.0.1:9/none",
    )
    assert result.returncode == 0, result.stderr
    counts = {table: len(repo_ids(table)) for table in SECTIONS}
    assert (
        f"{REPO_SETTINGS}: valid ({counts['connection']} connections, {counts['slot_pool']} pools, "
        f"{counts['variable']} variables)" in result.stdout
    )


# --- validation --------------------------------------------------------------------------------------

VALID_CONNECTION = """
    - conn_id: probe_api
      conn_type: http
      conn_host: http://127.0.0.1:9
"""

INVALID_FILES = {
    "unknown field": (
        """
        airflow:
          connections:
            - conn_id: probe_api
              conn_type: http
              conn_hots: http://127.0.0.1:9
        """,
        "connections[0] (conn_id=probe_api), field conn_hots: unknown field (allowed: conn_id, conn_type,",
    ),
    "zero pool slots": (
        """
        airflow:
          pools:
            - {pool_name: probe_pool, pool_slot: 0}
        """,
        "pools[0] (pool_name=probe_pool), field pool_slot: Input should be greater than or equal to 1",
    ),
    "pool slots as a word": (
        """
        airflow:
          pools:
            - {pool_name: probe_pool, pool_slot: two}
        """,
        "pools[0] (pool_name=probe_pool), field pool_slot: Input should be a valid integer",
    ),
    "pool slots as a boolean": (
        """
        airflow:
          pools:
            - {pool_name: probe_pool, pool_slot: true}
        """,
        "pools[0] (pool_name=probe_pool), field pool_slot: Input should be a valid integer",
    ),
    "duplicate conn_id": (
        "airflow:\n  connections:" + VALID_CONNECTION + VALID_CONNECTION,
        "connections[1] (conn_id=probe_api), field conn_id: duplicate of connections[0]",
    ),
    "unset environment variable": (
        """
        airflow:
          connections:
            - conn_id: probe_api
              conn_type: http
              conn_host: ${PROBE_UNSET_HOST}
        """,
        "connections[0] (conn_id=probe_api), field conn_host: environment variable PROBE_UNSET_HOST is not set",
    ),
    "unset variable inside conn_extra": (
        """
        airflow:
          connections:
            - conn_id: probe_api
              conn_type: http
              conn_extra: {headers: {x_team: "${PROBE_UNSET_TEAM}"}}
        """,
        "connections[0] (conn_id=probe_api), field conn_extra.headers.x_team: environment variable PROBE_UNSET_TEAM",
    ),
    "literal password": (
        """
        airflow:
          connections:
            - {conn_id: probe_db, conn_type: postgres, conn_password: hunter2}
        """,
        "connections[0] (conn_id=probe_db), field conn_password: a secret must be a bare ${VAR} reference",
    ),
    "password hidden in a default": (
        """
        airflow:
          connections:
            - {conn_id: probe_db, conn_type: postgres, conn_password: "${PROBE_PASSWORD:-hunter2}"}
        """,
        "connections[0] (conn_id=probe_db), field conn_password: a secret must be a bare ${VAR} reference",
    ),
    "literal token in conn_extra": (
        """
        airflow:
          connections:
            - conn_id: probe_api
              conn_type: http
              conn_extra: {access_token: abc123}
        """,
        "connections[0] (conn_id=probe_api), field conn_extra.access_token: a secret must be a bare ${VAR}",
    ),
    "unknown connection type": (
        """
        airflow:
          connections:
            - {conn_id: probe_db, conn_type: postgress}
        """,
        "connections[0] (conn_id=probe_db), field conn_type: unknown connection type 'postgress'; installed:",
    ),
    "conn_id outside the identifier pattern": (
        """
        airflow:
          connections:
            - {conn_id: Probe-API, conn_type: http}
        """,
        "connections[0] (conn_id=Probe-API), field conn_id: String should match pattern",
    ),
    "port that is not an integer": (
        """
        airflow:
          connections:
            - {conn_id: probe_db, conn_type: postgres, conn_port: "54x"}
        """,
        "connections[0] (conn_id=probe_db), field conn_port: Input should be a valid integer",
    ),
    "malformed reference": (
        """
        airflow:
          connections:
            - {conn_id: probe_api, conn_type: http, conn_host: "${PROBE_HOST"}
        """,
        "connections[0] (conn_id=probe_api), field conn_host: malformed reference",
    ),
    "boolean variable value": (
        """
        airflow:
          variables:
            - {variable_name: probe_flag, variable_value: yes}
        """,
        "variables[0] (variable_name=probe_flag), field variable_value: Input should be a valid string",
    ),
    "misspelled section": (
        """
        airflow:
          pool:
            - {pool_name: probe_pool, pool_slot: 1}
        """,
        "airflow.pool: unknown section (allowed: connections, pools, variables)",
    ),
    "repeated key in one entry": (
        """
        airflow:
          connections:
            - conn_id: probe_api
              conn_type: http
              conn_host: http://a
              conn_host: http://b
        """,
        "invalid YAML: while reading a mapping",
    ),
}


@pytest.mark.parametrize(("body", "expected"), INVALID_FILES.values(), ids=INVALID_FILES.keys())
def test_invalid_entry_is_reported_with_entry_and_field(tmp_path: Path, body: str, expected: str) -> None:
    path = write_settings(tmp_path / "settings.yaml", body)
    problems = problems_of(path)
    assert any(expected in problem for problem in problems), problems


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    path = write_settings(
        tmp_path / "settings.yaml",
        """
        airflow:
          connections:
            - {conn_id: probe_api, conn_type: http, conn_port: 0}
            - {conn_id: probe_db, conn_type: postgres, conn_login: "${PROBE_UNSET_USER}"}
          pools:
            - {pool_name: probe_pool, pool_slot: -1}
        """,
    )
    assert problems_of(path) == [
        "connections[0] (conn_id=probe_api), field conn_port: Input should be greater than or equal to 1",
        "connections[1] (conn_id=probe_db), field conn_login: environment variable PROBE_UNSET_USER is not set "
        "(and has no default)",
        "pools[0] (pool_name=probe_pool), field pool_slot: Input should be greater than or equal to 1",
    ]


def test_default_applies_when_the_variable_is_unset_or_empty(tmp_path: Path) -> None:
    path = write_settings(
        tmp_path / "settings.yaml",
        """
        airflow:
          connections:
            - {conn_id: probe_api, conn_type: http, conn_host: "http://${PROBE_HOST:-localhost}:${PROBE_PORT:-80}/x"}
        """,
    )
    for env in ({}, {"PROBE_HOST": "", "PROBE_PORT": ""}):
        assert load_settings(path, env).entries["connections"][0].conn_host == "http://localhost:80/x"
    resolved = load_settings(path, {"PROBE_HOST": "api.internal", "PROBE_PORT": "8443"})
    assert resolved.entries["connections"][0].conn_host == "http://api.internal:8443/x"


# --- applying to the metadata database ---------------------------------------------------------------


@pytest.fixture
def metadata_db(airflow_db: str) -> Iterator[psycopg.Connection]:
    """The metadata DB, without the rows these tests write (before and after), for other tests' sake."""
    server, dbname = PgServer.from_url(airflow_db)
    with psycopg.connect(server.conninfo(dbname), autocommit=True) as conn:
        delete_rows_of_these_tests(conn)
        yield conn
        delete_rows_of_these_tests(conn)


def snapshot(conn: psycopg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the three tables, raw (encrypted values included): any write shows up."""
    return {
        table: conn.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(sql.Identifier(table))).fetchall()
        for table in SECTIONS
    }


def delete_rows_of_these_tests(conn: psycopg.Connection) -> None:
    for table, (id_column, _, _) in SECTIONS.items():
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE {id} = ANY(%s) OR {id} LIKE 'probe\\_%%'").format(
                sql.Identifier(table), id=sql.Identifier(id_column)
            ),
            (repo_ids(table),),
        )


def read_connection(conn: psycopg.Connection, conn_id: str) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT conn_type, host, port, login, password, is_encrypted, extra, is_extra_encrypted"
        " FROM connection WHERE conn_id = %s",
        (conn_id,),
    ).fetchone()
    assert row is not None, f"no connection {conn_id}"
    conn_type, host, port, login, password, is_encrypted, extra, is_extra_encrypted = row
    extra = decrypted(extra, is_extra_encrypted)
    return (
        conn_type,
        host,
        port,
        login,
        decrypted(password, is_encrypted),
        json.loads(extra) if extra else {},
    )


def read_pool(conn: psycopg.Connection, name: str) -> tuple[Any, ...] | None:
    return conn.execute(
        "SELECT slots, description, include_deferred FROM slot_pool WHERE pool = %s", (name,)
    ).fetchone()


def read_variable(conn: psycopg.Connection, key: str) -> str | None:
    row = conn.execute("SELECT val, is_encrypted FROM variable WHERE key = %s", (key,)).fetchone()
    return row and decrypted(*row)


def decrypted(value: str | None, is_encrypted: bool) -> str | None:
    return Fernet(FERNET_KEY).decrypt(value.encode()).decode() if value and is_encrypted else value


def test_apply_creates_the_rows_and_a_second_apply_changes_nothing(metadata_db: psycopg.Connection) -> None:
    counts = {table: len(repo_ids(table)) for table in SECTIONS}
    first = run_cli("apply", REPO_SETTINGS)
    assert first.returncode == 0, first.stderr
    assert (
        f"applied {REPO_SETTINGS}: connections {counts['connection']} created, 0 updated, "
        f"0 unchanged; pools {counts['slot_pool']} created, " in first.stdout
    )
    assert f"variables {counts['variable']} created, 0 updated, 0 unchanged" in first.stdout
    assert read_connection(metadata_db, "warehouse") == (
        "postgres",
        "127.0.0.1",
        5432,
        "warehouse_rw",
        "warehouse-test-password",
        {},
    )
    assert read_connection(metadata_db, "demo_api") == (
        "http",
        "http://127.0.0.1:8081",
        None,
        None,
        "demo-test-token",
        {"timeout": 30, "requests_per_second": 5},
    )
    assert read_connection(metadata_db, "alerts_webhook")[1] == "http://127.0.0.1:8081/alerts"
    assert read_pool(metadata_db, "warehouse") == (
        4,
        "Tasks loading or merging into the warehouse Postgres at the same time.",
        False,
    )
    assert read_pool(metadata_db, "demo_api")[0] == 2
    assert read_variable(metadata_db, "batch_alert_dedup_minutes") == "60"
    after_first = snapshot(metadata_db)

    second = run_cli("apply", REPO_SETTINGS)
    assert second.returncode == 0, second.stderr
    assert (
        f"applied {REPO_SETTINGS}: connections 0 created, 0 updated, {counts['connection']} "
        f"unchanged; pools 0 created, 0 updated, {counts['slot_pool']} unchanged; "
        f"variables 0 created, 0 updated, {counts['variable']} unchanged"
    ) in second.stdout
    assert snapshot(metadata_db) == after_first


def test_a_changed_file_updates_only_the_changed_rows(
    metadata_db: psycopg.Connection, tmp_path: Path
) -> None:
    body = """
        airflow:
          connections:
            - {conn_id: probe_update_api, conn_type: http, conn_host: "${PROBE_URL}", conn_extra: {timeout: 5}}
          pools:
            - {pool_name: probe_update_pool, pool_slot: 1, pool_description: before}
          variables:
            - {variable_name: probe_update_var, variable_value: "1"}
        """
    path = write_settings(tmp_path / "settings.yaml", body)
    created = run_cli("apply", path, PROBE_URL="http://127.0.0.1:9")
    assert created.returncode == 0, created.stderr
    unchanged_variable = snapshot(metadata_db)["variable"]

    write_settings(path, body.replace("timeout: 5", "timeout: 7").replace("pool_slot: 1", "pool_slot: 3"))
    updated = run_cli("apply", path, PROBE_URL="https://api.example.test")
    assert updated.returncode == 0, updated.stderr
    assert "connection probe_update_api: updated" in updated.stdout
    assert "pool probe_update_pool: updated" in updated.stdout
    assert "variable probe_update_var: unchanged" in updated.stdout
    assert read_connection(metadata_db, "probe_update_api") == (
        "http",
        "https://api.example.test",
        None,
        None,
        None,
        {"timeout": 7},
    )
    assert read_pool(metadata_db, "probe_update_pool") == (3, "before", False)
    assert read_variable(metadata_db, "probe_update_var") == "1"
    assert snapshot(metadata_db)["variable"] == unchanged_variable


def test_an_invalid_file_applies_nothing(metadata_db: psycopg.Connection, tmp_path: Path) -> None:
    path = write_settings(
        tmp_path / "settings.yaml",
        """
        airflow:
          connections:
            - {conn_id: probe_invalid_ok, conn_type: http, conn_host: "http://127.0.0.1:9"}
            - {conn_id: probe_invalid_api, conn_type: http, conn_hots: "http://127.0.0.1:9"}
            - {conn_id: probe_invalid_ok, conn_type: http}
            - {conn_id: probe_invalid_db, conn_type: postgres, conn_host: "${PROBE_UNSET_HOST}"}
          pools:
            - {pool_name: probe_invalid_pool, pool_slot: 0}
          variables:
            - {variable_name: probe_invalid_var, variable_value: "1"}
        """,
    )
    before = snapshot(metadata_db)

    result = run_cli("apply", path)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{path}: connections[1] (conn_id=probe_invalid_api), field conn_hots: unknown field (allowed: conn_id, "
        "conn_type, conn_host, conn_schema, conn_login, conn_password, conn_port, conn_extra)",
        f"{path}: connections[2] (conn_id=probe_invalid_ok), field conn_id: duplicate of connections[0]",
        f"{path}: connections[3] (conn_id=probe_invalid_db), field conn_host: environment variable "
        "PROBE_UNSET_HOST is not set (and has no default)",
        f"{path}: pools[0] (pool_name=probe_invalid_pool), field pool_slot: Input should be greater than or "
        "equal to 1",
    ]
    assert result.stdout == ""
    assert snapshot(metadata_db) == before


@pytest.fixture
def variable_insert_fault(metadata_db: psycopg.Connection) -> Iterator[str]:
    """A trigger that makes the database refuse one variable: the last write of an apply fails."""
    metadata_db.execute(
        "CREATE FUNCTION probe_refuse_variable() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'injected fault: variable % refused', NEW.key; END $$"
    )
    metadata_db.execute(
        "CREATE TRIGGER probe_refuse_variable BEFORE INSERT ON variable FOR EACH ROW "
        "WHEN (NEW.key = 'probe_rollback_var') EXECUTE FUNCTION probe_refuse_variable()"
    )
    try:
        yield "probe_rollback_var"
    finally:
        metadata_db.execute("DROP TRIGGER probe_refuse_variable ON variable")
        metadata_db.execute("DROP FUNCTION probe_refuse_variable()")


def test_a_failed_write_rolls_back_the_whole_apply(
    metadata_db: psycopg.Connection, tmp_path: Path, variable_insert_fault: str
) -> None:
    path = write_settings(
        tmp_path / "settings.yaml",
        f"""
        airflow:
          connections:
            - {{conn_id: probe_rollback_api, conn_type: http, conn_host: "http://127.0.0.1:9"}}
          pools:
            - {{pool_name: probe_rollback_pool, pool_slot: 1}}
          variables:
            - {{variable_name: {variable_insert_fault}, variable_value: "1"}}
        """,
    )
    before = snapshot(metadata_db)

    result = run_cli("apply", path)

    assert result.returncode == 1
    assert f"{path}: nothing applied, the transaction was rolled back" in result.stderr
    assert "injected fault: variable probe_rollback_var refused" in result.stderr
    assert "[parameters:" not in result.stderr, "the failed statement's values must not be echoed"
    assert snapshot(metadata_db) == before
