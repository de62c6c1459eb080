"""batchkit.operators.quality against the session's real warehouse: common-sql's checks run for real on
a small table, every result lands in batch_meta.quality_results, the log gets a text table, and pass or
fail (with common-sql's own message) is exactly what the plain common-sql operator decides."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from airflow.providers.common.sql.operators import sql as common_sql
from airflow.sdk.execution_time.context import OutletEventAccessors
from psycopg import sql

from batchkit.operators.quality import (
    QualityResult,
    SQLColumnCheckOperator,
    SQLTableCheckOperator,
    render_results,
    sync_counts_extra,
)

START = datetime(2026, 3, 1, tzinfo=UTC)
END = datetime(2026, 3, 2, tzinfo=UTC)


@pytest.fixture
def table(warehouse: psycopg.Connection) -> str:
    """dq.items_<random>: three rows, one of them with a NULL name."""
    name = f"dq.items_{uuid.uuid4().hex[:8]}"
    relation = sql.Identifier(*name.split("."))
    warehouse.execute("CREATE SCHEMA IF NOT EXISTS dq")
    warehouse.execute(sql.SQL("CREATE TABLE {} (id integer, name text)").format(relation))
    warehouse.execute(sql.SQL("INSERT INTO {} VALUES (1, 'a'), (2, 'b'), (3, NULL)").format(relation))
    return name


def task_context(task_id: str) -> dict[str, Any]:
    """What the operators read from a task's context: the task instance's ids and the data interval."""
    run_id = f"manual__{uuid.uuid4().hex[:8]}"
    ti = SimpleNamespace(dag_id="dq_test", task_id=task_id, run_id=run_id, try_number=1)
    return {
        "ti": ti,
        "run_id": run_id,
        "data_interval_start": START,
        "data_interval_end": END,
        "outlet_events": OutletEventAccessors(),
    }


def stored(warehouse: psycopg.Connection, run_id: str) -> list[tuple]:
    return warehouse.execute(
        """
        SELECT task_id, try_number, interval_start, interval_end, table_name, check_name, column_name,
               passed, expected, observed
          FROM batch_meta.quality_results WHERE run_id = %s ORDER BY check_name
        """,
        (run_id,),
    ).fetchall()


def failure_of(operator: Any, context: dict[str, Any]) -> str:
    with pytest.raises(Exception) as raised:  # noqa: PT011 - the exact type is compared below
        operator.execute(context)
    return f"{type(raised.value).__name__}: {raised.value}"


def test_column_checks_record_every_result_and_fail_exactly_as_common_sql_does(
    warehouse: psycopg.Connection, table: str, capfd: pytest.CaptureFixture[str]
) -> None:
    mapping = {"id": {"null_check": {"equal_to": 0}}, "name": {"null_check": {"equal_to": 0}}}
    context = task_context("check_keys")
    recorded = SQLColumnCheckOperator(
        task_id="recorded", conn_id="warehouse", table=table, column_mapping=mapping
    )
    plain = common_sql.SQLColumnCheckOperator(
        task_id="plain", conn_id="warehouse", table=table, column_mapping=mapping
    )

    failure = failure_of(recorded, context)
    task_log = capfd.readouterr().out

    common_sql_failure = failure_of(plain, task_context("check_keys"))
    # The same type and message as common-sql's, under a first line (what alerts show) naming the failure.
    assert failure == common_sql_failure.replace(
        "AirflowException: ",
        "AirflowException: Data-quality check(s) failed: name.null_check (column name)\n",
        1,
    )
    assert common_sql_failure.startswith("AirflowException: Test failed.")
    assert "Column: name\n\tCheck: null_check," in failure
    assert "Column: id" not in failure
    assert stored(warehouse, context["run_id"]) == [
        ("check_keys", 1, START, END, table, "id.null_check", "id", True, "0", "0"),
        ("check_keys", 1, START, END, table, "name.null_check", "name", False, "0", "1"),
    ]
    expected_table = (
        "check            column  result  expected  observed\n"
        "---------------  ------  ------  --------  --------\n"
        "id.null_check    id      PASS    0         0\n"
        "name.null_check  name    FAIL    0         1"
    )
    assert f"Data-quality results (2 checks, 1 failed):\n{expected_table}" in task_log


def test_table_checks_record_a_pass_and_a_fail_and_keep_common_sqls_outcome(
    warehouse: psycopg.Connection, table: str
) -> None:
    passing = {"row_count": {"check_statement": "COUNT(*) = 3"}}
    context = task_context("check_rows")
    SQLTableCheckOperator(task_id="check_rows", conn_id="warehouse", table=table, checks=passing).execute(
        context
    )
    assert stored(warehouse, context["run_id"]) == [
        ("check_rows", 1, START, END, table, "row_count", None, True, "all truthy", "1"),
    ]

    failing = {
        "row_count": {"check_statement": "COUNT(*) = 3"},
        "all_named": {"check_statement": "name IS NOT NULL"},
    }
    context = task_context("check_rows")
    recorded = SQLTableCheckOperator(task_id="recorded", conn_id="warehouse", table=table, checks=failing)
    plain = common_sql.SQLTableCheckOperator(
        task_id="plain", conn_id="warehouse", table=table, checks=failing, retry_on_failure=False
    )
    recorded.retry_on_failure = False

    failure = failure_of(recorded, context)

    common_sql_failure = failure_of(plain, task_context("check_rows"))
    assert failure == common_sql_failure.replace(
        "AirflowFailException: ", "AirflowFailException: Data-quality check(s) failed: all_named\n", 1
    )
    assert common_sql_failure.startswith("AirflowFailException: Test failed.")
    assert "Check: all_named," in failure
    assert stored(warehouse, context["run_id"]) == [
        ("check_rows", 1, START, END, table, "all_named", None, False, "all truthy", "0"),
        ("check_rows", 1, START, END, table, "row_count", None, True, "all truthy", "1"),
    ]


def test_a_check_query_that_fails_records_nothing_and_raises_its_own_error(
    warehouse: psycopg.Connection, table: str
) -> None:
    context = task_context("check_rows")
    broken = SQLTableCheckOperator(
        task_id="check_rows",
        conn_id="warehouse",
        table=table,
        checks={"bad": {"check_statement": "no_such_column > 0"}},
    )
    with pytest.raises(psycopg.errors.UndefinedColumn):
        broken.execute(context)
    assert stored(warehouse, context["run_id"]) == []


def test_the_rendered_table_is_fixed_width_and_cuts_long_values() -> None:
    text = render_results(
        [
            QualityResult("freshness", None, True, "all truthy", "1"),
            QualityResult("amount.max", "amount", False, "<=" + "9" * 60, None),
        ]
    )
    lines = text.splitlines()
    assert lines[0].split() == ["check", "column", "result", "expected", "observed"]
    assert lines[2].split() == ["freshness", "-", "PASS", "all", "truthy", "1"]
    assert lines[3].split() == ["amount.max", "amount", "FAIL", "<=" + "9" * 35 + "...", "-"]
    # Columns line up: every cell of a column starts where its header does.
    starts = [lines[0].index(word) for word in ("column", "result", "expected")]
    for line in lines[2:]:
        assert [line[start - 2 : start] for start in starts] == ["  "] * 3


def test_sync_counts_extra_takes_the_counts_and_says_whether_they_reconcile() -> None:
    summary = {
        "target": "sales.orders",
        "interval_start": START.isoformat(),
        "interval_end": END.isoformat(),
        "dry_run": False,
        "pages": 3,
        "received": 10,
        "staged": 9,
        "quarantined": 1,
        "inserted": 7,
        "updated": 2,
        "deleted": 0,
    }
    extra = sync_counts_extra(summary)
    assert extra == {**{k: v for k, v in summary.items() if k != "dry_run"}, "reconciled": True}
    assert sync_counts_extra({**summary, "staged": 8})["reconciled"] is False
