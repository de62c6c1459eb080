"""The YAML sync DAGs end to end: dag.test() against the real metadata DB, warehouse and demo upstream.

Every expectation is computed from tools.demo_upstream's pure functions for the run's interval (which
records the upstream serves, and their values), never written down as a count.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pendulum
import psycopg
import pytest
import yaml
from croniter import croniter
from psycopg import sql

from batchkit.assets import table_asset
from batchkit.sync_spec import SyncSpec, load_spec, spec_path
from tests.dagrun import parse_dag, run_dag
from tests.upstream import Upstream
from tools import REPO_ROOT
from tools.demo_upstream import FIELDS, Volumes, record_values, select

SYNC_DAG_FILES = {
    "sales_orders_sync": REPO_ROOT / "dags" / "sales" / "sales_orders_sync.py",
    "crm_customers_sync": REPO_ROOT / "dags" / "crm" / "crm_customers_sync.py",
}
SYNC_TASKS = ("extract_stage", "verify_quarantine", "merge", "check_keys", "check_rows_and_freshness")


def sync_tasks(sync: Sync) -> tuple[str, ...]:
    """SYNC_TASKS plus the checks the sync's YAML declares (`check_columns`)."""
    return SYNC_TASKS + tuple(sorted(set(sync.dag.task_ids) - set(SYNC_TASKS)))


# The operators' checkpoint key (batchkit.sync_dag.SYNC_KEY): one checkpoint row per interval.
CHECKPOINT_TASK_ID = "sync"
SOURCE_TIMESTAMPS = frozenset({"order_ts", "updated_at"})
SOURCE_DECIMALS = frozenset({"amount"})


@dataclass(frozen=True)
class Sync:
    """A sync DAG with the facts its YAML and contract declare."""

    spec: SyncSpec
    dag: Any

    @property
    def resource(self) -> str:
        """The upstream resource: the contract's source name is the API's resource name."""
        return self.spec.record_contract().source

    @property
    def table(self) -> str:
        return self.spec.target.table

    @property
    def columns(self) -> tuple[str, ...]:
        return self.spec.target_spec().columns

    @property
    def key(self) -> tuple[str, ...]:
        return self.spec.target_spec().key

    @property
    def endpoint(self) -> str:
        return self.spec.source.endpoint


@pytest.fixture(scope="module")
def syncs(airflow_db: str) -> dict[str, Sync]:
    return {
        dag_id: Sync(spec=load_spec(spec_path(dag_id)), dag=parse_dag(path, dag_id))
        for dag_id, path in SYNC_DAG_FILES.items()
    }


def at_cron_tick(sync: Sync, day: tuple[int, int, int]) -> datetime:
    """The schedule's first tick on `day`: a logical date whose manual data interval ends there."""
    zone = sync.spec.schedule.timezone
    midnight = pendulum.datetime(*day, tz=zone)
    tick = croniter(sync.spec.schedule.cron, midnight - timedelta(microseconds=1)).get_next(datetime)
    return pendulum.instance(tick).in_timezone(zone)


def source_rows(sync: Sync, start: datetime, end: datetime, volumes: Volumes) -> list[tuple[Any, ...]]:
    """The upstream's records of [start, end) in the order it serves them, as target rows typed as
    Postgres returns them."""
    names = [name for name, _ in FIELDS[sync.resource]]
    rows = []
    for day, first, stop in select(sync.resource, start, end, volumes).runs:
        for index in range(first, stop):
            record = dict(zip(names, record_values(sync.resource, day, index, volumes), strict=True))
            rows.append(tuple(_as_stored(column, record[column]) for column in sync.columns))
    return rows


def by_key(sync: Sync, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    positions = [sync.columns.index(column) for column in sync.key]
    return sorted(rows, key=lambda row: [row[position] for position in positions])


def _as_stored(column: str, value: Any) -> Any:
    if column in SOURCE_TIMESTAMPS:
        return datetime.fromisoformat(value)
    if column in SOURCE_DECIMALS:
        return Decimal(value)
    return value


def target_rows(warehouse: psycopg.Connection, sync: Sync) -> list[tuple[Any, ...]]:
    return warehouse.execute(
        sql.SQL("SELECT {columns} FROM {table} ORDER BY {key}").format(
            columns=sql.SQL(", ").join(map(sql.Identifier, sync.columns)),
            table=sql.Identifier(*sync.table.split(".")),
            key=sql.SQL(", ").join(map(sql.Identifier, sync.key)),
        )
    ).fetchall()


def table_checksum(warehouse: psycopg.Connection, table: str) -> tuple[int, str | None]:
    """(rows, md5 of every row's text form in a total order): equal only if the contents are equal."""
    relation = sql.Identifier(*table.split("."))
    return warehouse.execute(
        sql.SQL("SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY t::text)) FROM {} AS t").format(
            relation
        )
    ).fetchone()


def task_states(dag_id: str, run_id: str) -> dict[str, str | None]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select as select_rows

    with create_session() as session:
        rows = session.execute(
            select_rows(TaskInstance.task_id, TaskInstance.state).where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id
            )
        ).all()
    return {task_id: None if state is None else str(state) for task_id, state in rows}


def asset_events(sync: Sync, run_id: str) -> list[tuple[str | None, str | None]]:
    """(source_dag_id, source_task_id) of each event of the sync's table Asset emitted by `run_id`."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select as select_rows

    uri = table_asset(sync.table, conn_id=sync.spec.target.conn_id).uri
    with create_session() as session:
        rows = session.execute(
            select_rows(AssetEvent.source_dag_id, AssetEvent.source_task_id)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == uri, AssetEvent.source_run_id == run_id)
            .order_by(AssetEvent.id)
        ).all()
    return [tuple(row) for row in rows]


def asset_event_extras(sync: Sync, run_id: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(source_task_id, extra) of each event of the sync's table Asset emitted by `run_id`."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select as select_rows

    uri = table_asset(sync.table, conn_id=sync.spec.target.conn_id).uri
    with create_session() as session:
        rows = session.execute(
            select_rows(AssetEvent.source_task_id, AssetEvent.extra)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == uri, AssetEvent.source_run_id == run_id)
            .order_by(AssetEvent.id)
        ).all()
    return [(task_id, dict(extra or {})) for task_id, extra in rows]


def quality_rows(warehouse: psycopg.Connection, run_id: str) -> list[tuple[Any, ...]]:
    return warehouse.execute(
        """
        SELECT task_id, check_name, column_name, passed, interval_start, interval_end, observed
          FROM batch_meta.quality_results WHERE run_id = %s ORDER BY task_id, check_name
        """,
        (run_id,),
    ).fetchall()


def checkpoint(warehouse: psycopg.Connection, sync: Sync, start: datetime, end: datetime) -> dict[str, Any]:
    with warehouse.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute(
            """
            SELECT state, pages_done, rows_received, rows_staged, rows_quarantined
              FROM batch_meta.checkpoints
             WHERE dag_id = %s AND task_id = %s AND interval_start = %s AND interval_end = %s
            """,
            (sync.spec.dag_id, CHECKPOINT_TASK_ID, start, end),
        ).fetchone()
    assert row is not None, f"no checkpoint for {sync.spec.dag_id} [{start}, {end})"
    return row


def assert_loaded_exactly(
    warehouse: psycopg.Connection, sync: Sync, start: datetime, end: datetime, volumes: Volumes
) -> list[tuple[Any, ...]]:
    expected = by_key(sync, source_rows(sync, start, end, volumes))
    assert expected, "the interval must hold records, or the test proves nothing"
    actual = target_rows(warehouse, sync)
    assert len(actual) == len(expected)
    assert actual == expected
    return expected


def page_count(sync: Sync, records: int) -> int:
    return -(-records // sync.spec.source.pagination.page_size)


def try_numbers(dag_id: str, run_id: str) -> dict[str, int]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select as select_rows

    with create_session() as session:
        rows = session.execute(
            select_rows(TaskInstance.task_id, TaskInstance.try_number).where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id
            )
        ).all()
    return dict(rows)


def task_result(dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
    """A task's return value (its XCom), as the next task or the UI reads it."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select as select_rows

    with create_session() as session:
        stored = session.scalars(
            select_rows(XComModel).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == task_id,
                XComModel.key == "return_value",
            )
        ).one()
        return XComModel.deserialize_value(stored)


def merge_counts(warehouse: psycopg.Connection, sync: Sync, run: Any) -> tuple[int, int, int]:
    """(inserted, updated, deleted) the run's merge recorded on its checkpoint."""
    return warehouse.execute(
        """
        SELECT rows_inserted, rows_updated, rows_deleted FROM batch_meta.checkpoints
         WHERE dag_id = %s AND task_id = %s AND interval_start = %s AND interval_end = %s AND run_id = %s
        """,
        (sync.spec.dag_id, CHECKPOINT_TASK_ID, run.data_interval_start, run.data_interval_end, run.run_id),
    ).fetchone()


SNAPSHOT_SCHEMAS = ("sales", "crm", "batch_meta")


def warehouse_snapshot(warehouse: psycopg.Connection) -> dict[str, tuple[int, str | None]]:
    """(rows, checksum) of every table in the schemas a sync writes, staging tables included."""
    tables = warehouse.execute(
        "SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname = ANY(%s) ORDER BY 1",
        (list(SNAPSHOT_SCHEMAS),),
    ).fetchall()
    return {table: table_checksum(warehouse, table) for (table,) in tables}


@pytest.mark.parametrize("dag_id", sorted(SYNC_DAG_FILES))
def test_a_sync_dag_loads_one_interval_end_to_end(
    dag_id: str, syncs: dict[str, Sync], warehouse: psycopg.Connection, volumes: Volumes
) -> None:
    sync = syncs[dag_id]
    logical_date = at_cron_tick(sync, (2026, 3, 2))

    run = run_dag(sync.dag, logical_date)

    assert run.state == "success"
    assert task_states(dag_id, run.run_id) == dict.fromkeys(sync_tasks(sync), "success")
    start, end = run.data_interval_start, run.data_interval_end
    assert (start, end) == (logical_date - timedelta(days=1), logical_date)
    expected = assert_loaded_exactly(warehouse, sync, start, end, volumes)
    assert checkpoint(warehouse, sync, start, end) == {
        "state": "complete",
        "pages_done": page_count(sync, len(expected)),
        "rows_received": len(expected),
        "rows_staged": len(expected),
        "rows_quarantined": 0,
    }
    assert asset_events(sync, run.run_id) == [(dag_id, "check_rows_and_freshness")]


def test_checks_record_their_results_and_the_asset_event_carries_the_sync_counts(
    syncs: dict[str, Sync],
    upstream: Upstream,
    warehouse: psycopg.Connection,
    volumes: Volumes,
) -> None:
    sync = syncs["sales_orders_sync"]
    dag = sync.dag
    logical_date = at_cron_tick(sync, (2026, 3, 12))
    start, end = logical_date - timedelta(days=1), logical_date
    received = select(sync.resource, start, end, volumes).total
    bad = [5, received - 1]  # two records the contract rejects: quarantined, not loaded
    upstream.set_faults(
        {"kind": "bad_records", "path": sync.endpoint, "defect": "missing_id", "record_indices": bad}
    )

    run = run_dag(dag, logical_date)

    assert run.state == "success"
    assert task_states(sync.spec.dag_id, run.run_id) == dict.fromkeys(sync_tasks(sync), "success")
    loaded = len(target_rows(warehouse, sync))
    assert loaded == received - len(bad)
    assert asset_event_extras(sync, run.run_id) == [
        (
            "check_rows_and_freshness",
            {
                "target": sync.table,
                "interval_start": start.isoformat(),
                "interval_end": end.isoformat(),
                "pages": page_count(sync, received),
                "received": received,
                "staged": loaded,
                "quarantined": len(bad),
                "inserted": loaded,
                "updated": 0,
                "deleted": 0,
                "reconciled": True,
                "checks_passed": len(declared_table_checks(sync)),
                "checks_failed": 0,
            },
        )
    ]
    rows = quality_rows(warehouse, run.run_id)
    assert {(task, check, column, passed) for task, check, column, passed, *_ in rows} == {
        *(("check_keys", f"{key}.null_check", key, True) for key in sync.key),
        *declared_column_checks(sync, passed=True),
        *(("check_rows_and_freshness", name, None, True) for name in declared_table_checks(sync)),
    }
    assert {(row[4], row[5]) for row in rows} == {(start, end)}
    observed = {check: value for _, check, _, _, _, _, value in rows}
    assert observed["interval_row_count"] == observed["freshness"] == "1"
    assert all(observed[f"{key}.null_check"] == "0" for key in sync.key)


def declared_table_checks(sync: Sync) -> list[str]:
    return [*sync.spec.quality.table_checks(), "freshness"]


def declared_column_checks(sync: Sync, *, passed: bool) -> set[tuple[str, str, str, bool]]:
    return {
        ("check_columns", f"{column}.{check}", column, passed)
        for column, mapping in sync.spec.quality.column_mapping().items()
        for check in mapping
    }


def test_a_record_outside_the_accepted_values_fails_the_check_that_names_its_column(
    syncs: dict[str, Sync],
    upstream: Upstream,
    warehouse: psycopg.Connection,
) -> None:
    sync = syncs["sales_orders_sync"]
    assert "status" in sync.spec.quality.columns, (
        "the fixture relies on the sync's accepted_values for status"
    )
    logical_date = at_cron_tick(sync, (2026, 3, 14))
    upstream.set_faults(
        {"kind": "bad_records", "path": sync.endpoint, "defect": "unknown_status", "record_indices": [3]}
    )

    run = run_dag(sync.dag, logical_date)

    assert run.state == "failed"
    states = task_states(sync.spec.dag_id, run.run_id)
    # The record is well-formed, so it is loaded; the check after the merge is what catches it.
    assert states["merge"] == "success"
    assert states["check_rows_and_freshness"] == "failed"
    failed = [
        (task, check) for task, check, _, passed, *_ in quality_rows(warehouse, run.run_id) if not passed
    ]
    assert failed == [("check_rows_and_freshness", "status_accepted_values")]
    (alert,) = [
        a
        for a in upstream.alerts()
        if a.get("run_id") == run.run_id and a.get("task_id") == "check_rows_and_freshness"
    ]
    assert alert["error"].splitlines()[0] == (
        "AirflowFailException: Data-quality check(s) failed: status_accepted_values"
    ), "the alert's first line must name the failing check"


def test_loading_the_same_interval_twice_leaves_the_table_identical(
    syncs: dict[str, Sync], warehouse: psycopg.Connection, volumes: Volumes
) -> None:
    sync = syncs["sales_orders_sync"]
    logical_date = at_cron_tick(sync, (2026, 3, 3))

    first = run_dag(sync.dag, logical_date)
    after_first = table_checksum(warehouse, sync.table)
    merged_first = merge_counts(warehouse, sync, first)
    second = run_dag(sync.dag, logical_date)

    assert (first.state, second.state) == ("success", "success")
    assert table_checksum(warehouse, sync.table) == after_first
    expected = assert_loaded_exactly(
        warehouse, sync, first.data_interval_start, first.data_interval_end, volumes
    )
    assert merged_first == (len(expected), 0, 0)
    # The reload re-read the source and merged it: every key already there with the same values.
    assert merge_counts(warehouse, sync, second) == (0, 0, 0)
    assert checkpoint(warehouse, sync, second.data_interval_start, second.data_interval_end)[
        "rows_received"
    ] == len(expected)


@pytest.mark.slow
def test_a_week_loaded_twice_gives_the_same_rows(
    syncs: dict[str, Sync], warehouse: psycopg.Connection, volumes: Volumes
) -> None:
    sync = syncs["sales_orders_sync"]
    week = [at_cron_tick(sync, (2026, 3, 9)) + timedelta(days=offset) for offset in range(7)]

    checksums = []
    for _ in range(2):
        runs = [run_dag(sync.dag, logical_date) for logical_date in week]
        assert [run.state for run in runs] == ["success"] * len(week)
        checksums.append(table_checksum(warehouse, sync.table))

    assert checksums[1] == checksums[0]
    start, end = week[0] - timedelta(days=1), week[-1]
    expected = assert_loaded_exactly(warehouse, sync, start, end, volumes)
    states = warehouse.execute(
        """
        SELECT state, sum(rows_received)::int, count(*)::int FROM batch_meta.checkpoints
         WHERE dag_id = %s AND interval_start >= %s AND interval_end <= %s GROUP BY state
        """,
        (sync.spec.dag_id, start, end),
    ).fetchall()
    assert states == [("complete", len(expected), len(week))]


def test_transient_upstream_faults_are_retried_inside_the_task(
    syncs: dict[str, Sync], upstream: Upstream, warehouse: psycopg.Connection, volumes: Volumes
) -> None:
    sync = syncs["sales_orders_sync"]
    logical_date = at_cron_tick(sync, (2026, 3, 4))
    records = select(sync.resource, logical_date - timedelta(days=1), logical_date, volumes).total
    pages = page_count(sync, records)
    assert pages >= 3, "the faults below need three pages"
    upstream.set_faults(
        {"kind": "status", "status": 429, "retry_after": 1, "path": sync.endpoint, "page": 1, "times": 1},
        {"kind": "status", "status": 503, "path": sync.endpoint, "page": 2, "times": 2},
        {"kind": "reset", "path": sync.endpoint, "page": 3, "times": 1},
    )

    run = run_dag(sync.dag, logical_date)

    assert run.state == "success"
    assert try_numbers(sync.spec.dag_id, run.run_id) == dict.fromkeys(sync_tasks(sync), 1), (
        "the faults are within the in-task retry budget: no Airflow-level retry"
    )
    assert upstream.page_requests(sync.endpoint) == {
        **dict.fromkeys(range(1, pages + 1), 1),
        1: 2,
        2: 3,
        3: 2,
    }
    assert_loaded_exactly(warehouse, sync, run.data_interval_start, run.data_interval_end, volumes)
    assert checkpoint(warehouse, sync, run.data_interval_start, run.data_interval_end)["state"] == "complete"


# Result positions (0-based over the interval) with the defect the upstream gives them, and the field
# the quarantine error must name.
DEFECTS = {7: ("missing_id", "order_id"), 1234: ("wrong_type", "order_id"), 2345: ("missing_id", "order_id")}


def test_malformed_records_are_quarantined_with_their_error_and_payload(
    syncs: dict[str, Sync], upstream: Upstream, warehouse: psycopg.Connection, volumes: Volumes
) -> None:
    from tools.demo_upstream import FaultRule, corrupt

    sync = syncs["sales_orders_sync"]
    logical_date = at_cron_tick(sync, (2026, 3, 5))
    start, end = logical_date - timedelta(days=1), logical_date
    selection = select(sync.resource, start, end, volumes)
    assert max(DEFECTS) < selection.total
    rules = [
        {"kind": "bad_records", "path": sync.endpoint, "defect": defect, "record_indices": [position]}
        for position, (defect, _) in DEFECTS.items()
    ]
    upstream.set_faults(*rules)

    run = run_dag(sync.dag, logical_date)

    assert run.state == "success"
    page_size = sync.spec.source.pagination.page_size
    quarantined = warehouse.execute(
        """
        SELECT page_number, record_index, payload, error FROM batch_meta.quarantine
         WHERE dag_id = %s AND interval_start = %s AND interval_end = %s AND run_id = %s
         ORDER BY page_number, record_index
        """,
        (sync.spec.dag_id, start, end, run.run_id),
    ).fetchall()
    assert [(page, index) for page, index, _, _ in quarantined] == [
        (position // page_size + 1, position % page_size) for position in DEFECTS
    ]
    for (_, _, payload, error), (position, (_, field)), rule in zip(
        quarantined, DEFECTS.items(), rules, strict=True
    ):
        [sent] = corrupt(selection.records(position, 1), position, [FaultRule.model_validate(rule)])
        assert payload == sent
        assert field in error
    sent_rows = source_rows(sync, start, end, volumes)
    good = [row for position, row in enumerate(sent_rows) if position not in DEFECTS]
    assert target_rows(warehouse, sync) == by_key(sync, good)
    progress = checkpoint(warehouse, sync, start, end)
    assert progress["state"] == "complete"
    assert (progress["rows_received"], progress["rows_staged"], progress["rows_quarantined"]) == (
        selection.total,
        selection.total - len(DEFECTS),
        len(DEFECTS),
    )
    assert progress["rows_received"] == len(target_rows(warehouse, sync)) + len(quarantined)


def test_a_dry_run_validates_everything_and_writes_nothing(
    syncs: dict[str, Sync], upstream: Upstream, warehouse: psycopg.Connection, volumes: Volumes
) -> None:
    sync = syncs["sales_orders_sync"]
    loaded_day = at_cron_tick(sync, (2026, 3, 6))
    dry_day = loaded_day + timedelta(days=1)
    # Bad records in every interval: the loaded one leaves quarantine rows, the dry one would add some.
    upstream.set_faults(
        {"kind": "bad_records", "path": sync.endpoint, "defect": "missing_id", "record_indices": [3, 1500]}
    )
    assert run_dag(sync.dag, loaded_day).state == "success"
    before = warehouse_snapshot(warehouse)
    assert all(
        before[table][0] > 0 for table in (sync.table, "batch_meta.checkpoints", "batch_meta.quarantine")
    )
    requests_before = upstream.requests_to(sync.endpoint)

    run = run_dag(sync.dag, dry_day, {"dry_run": True})

    assert run.state == "success"
    assert warehouse_snapshot(warehouse) == before
    assert task_states(sync.spec.dag_id, run.run_id) == {
        "extract_stage": "success",
        **dict.fromkeys(sync_tasks(sync)[1:], "skipped"),
    }
    total = select(sync.resource, dry_day - timedelta(days=1), dry_day, volumes).total
    assert upstream.requests_to(sync.endpoint) - requests_before == page_count(sync, total)
    validated = task_result(sync.spec.dag_id, run.run_id, "extract_stage")
    assert validated["dry_run"] is True
    assert (validated["received"], validated["staged"], validated["quarantined"]) == (total, total - 2, 2)
    assert asset_events(sync, run.run_id) == []


MERGE_PROBE_ID = "sales_orders_merge_probe"


@pytest.fixture
def merge_probe(airflow_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sync:
    """sales_orders_sync's YAML as another DAG whose retries take seconds, not minutes, parsed from a
    dags folder and include dir of its own (sql/ is the repo's), registered as a second bundle."""
    from batchkit.sql_files import INCLUDE_DIR_ENV, include_dir

    declared = yaml.safe_load(spec_path("sales_orders_sync").read_text(encoding="utf-8"))
    include = tmp_path / "include"
    (include / "automations").mkdir(parents=True)
    (include / "sql").symlink_to(include_dir() / "sql")
    spec_file = include / "automations" / f"{MERGE_PROBE_ID}.yaml"
    spec_file.write_text(
        yaml.safe_dump({**declared, "dag_id": MERGE_PROBE_ID, "retries": 2, "retry_delay_seconds": 1})
    )
    dags = tmp_path / "dags"
    dags.mkdir()
    # The repo's own DAG file, which names its YAML by its file name.
    (dags / f"{MERGE_PROBE_ID}.py").write_text(SYNC_DAG_FILES["sales_orders_sync"].read_text())
    monkeypatch.setenv(INCLUDE_DIR_ENV, str(include))
    bundles = [
        {
            "name": "dags-folder",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(REPO_ROOT / "dags"), "refresh_interval": 0},
        },
        {
            "name": "merge-probe",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(dags), "refresh_interval": 0},
        },
    ]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
    return Sync(spec=load_spec(spec_file), dag=parse_dag(dags / f"{MERGE_PROBE_ID}.py", MERGE_PROBE_ID))


@pytest.fixture
def failing_merge(warehouse: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """Every write to sales.orders raises while public.block_orders_merge has a row (one is inserted)."""
    warehouse.execute(
        """
        CREATE TABLE public.block_orders_merge (reason text NOT NULL);
        INSERT INTO public.block_orders_merge VALUES ('test: the merge must fail');
        CREATE FUNCTION public.block_orders_merge() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT FROM public.block_orders_merge) THEN
                RAISE EXCEPTION 'writes to sales.orders are blocked by the test';
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER block_orders_merge BEFORE INSERT OR UPDATE OR DELETE ON sales.orders
            FOR EACH STATEMENT EXECUTE FUNCTION public.block_orders_merge();
        """
    )
    try:
        yield warehouse
    finally:
        warehouse.execute(
            """
            DROP TRIGGER block_orders_merge ON sales.orders;
            DROP FUNCTION public.block_orders_merge();
            DROP TABLE public.block_orders_merge;
            """
        )


def test_a_failed_merge_then_a_rerun_loads_the_interval_exactly_once(
    merge_probe: Sync,
    failing_merge: psycopg.Connection,
    upstream: Upstream,
    warehouse: psycopg.Connection,
    volumes: Volumes,
) -> None:
    sync = merge_probe
    logical_date = at_cron_tick(sync, (2026, 3, 8))
    start, end = logical_date - timedelta(days=1), logical_date

    failed = run_dag(sync.dag, logical_date)

    assert failed.state == "failed"
    assert task_states(sync.spec.dag_id, failed.run_id) == {
        "extract_stage": "success",
        "verify_quarantine": "success",
        "merge": "failed",
        **dict.fromkeys(sync_tasks(sync)[3:], "upstream_failed"),
    }
    assert try_numbers(sync.spec.dag_id, failed.run_id)["merge"] == sync.spec.retries + 1
    assert table_checksum(warehouse, sync.table) == (0, None), "a failed merge must leave nothing behind"
    assert checkpoint(warehouse, sync, start, end)["state"] == "in_progress"
    [alert] = [alert for alert in upstream.alerts() if alert.get("run_id") == failed.run_id]
    assert (alert["kind"], alert["task_id"]) == ("task_failed", "merge")
    requests_for_first_run = upstream.requests_to(sync.endpoint)

    failing_merge.execute("DELETE FROM public.block_orders_merge")
    rerun = run_dag(sync.dag, logical_date)

    assert rerun.state == "success"
    assert task_states(sync.spec.dag_id, rerun.run_id) == dict.fromkeys(sync_tasks(sync), "success")
    expected = assert_loaded_exactly(warehouse, sync, start, end, volumes)
    duplicates = warehouse.execute("SELECT count(*) - count(DISTINCT order_id) FROM sales.orders").fetchone()[
        0
    ]
    assert duplicates == 0
    progress = checkpoint(warehouse, sync, start, end)
    assert (progress["state"], progress["rows_received"], progress["rows_staged"]) == (
        "complete",
        len(expected),
        len(expected),
    )
    assert upstream.requests_to(sync.endpoint) == requests_for_first_run, (
        "the rerun must resume from the staged pages, not fetch them again"
    )


def test_a_manual_run_without_logical_date_loads_the_last_complete_interval(
    syncs: dict[str, Sync], warehouse: psycopg.Connection, volumes: Volumes
) -> None:
    sync = syncs["crm_customers_sync"]
    triggered_at = pendulum.datetime(2026, 3, 12, 9, 30, tz="UTC")
    # The documented rule: the last complete interval before the trigger. The daily tick of the 12th has
    # passed at 09:30, so the interval runs from the 11th's tick to the 12th's.
    end = at_cron_tick(sync, (2026, 3, 12))
    start = at_cron_tick(sync, (2026, 3, 11))
    assert start < end <= triggered_at

    run = run_dag(sync.dag, None, run_after=triggered_at)

    assert run.state == "success"
    assert (run.logical_date, run.data_interval_start, run.data_interval_end) == (None, None, None)
    assert task_states(sync.spec.dag_id, run.run_id) == dict.fromkeys(sync_tasks(sync), "success")
    assert_loaded_exactly(warehouse, sync, start, end, volumes)
    assert checkpoint(warehouse, sync, start, end)["state"] == "complete"
    merged = task_result(sync.spec.dag_id, run.run_id, "merge")
    assert (merged["interval_start"], merged["interval_end"]) == (start.isoformat(), end.isoformat())
