"""docs/dags.md is the catalog tools.dag_catalog generates from dags/, byte for byte, and the check says so.

The first test is the CI guard: it runs the command exactly as `make catalog` does (its own throwaway
Airflow home, a metadata DB URL on a closed port), so a DAG change without a regenerated catalog fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pendulum
import pytest
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Asset

from bench.parse_time import dag_files as bench_dag_files
from tools.dag_catalog import (
    CATALOG,
    EXIT_BROKEN_DAGS,
    EXIT_OK,
    EXIT_STALE,
    build,
    first_paragraph,
    main,
    retries_text,
    schedule_text,
    stale_diff,
    tasks_in_dependency_order,
)
from tools.metadb import REPO_ROOT

ORDERS = Asset("x-table://warehouse/sales/orders")
CUSTOMERS = Asset("x-table://warehouse/crm/customers")


@pytest.fixture(scope="module")
def generated() -> str:
    return build(REPO_ROOT)


def test_the_committed_catalog_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tools.dag_catalog", "--check"],
        cwd=REPO_ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == EXIT_OK, (
        f"docs/dags.md is stale or the DAGs do not parse; run `make catalog`:\n{result.stdout[-6000:]}"
        f"{result.stderr[-3000:]}"
    )


def test_every_dag_file_has_its_section(generated: str) -> None:
    dag_files = [path.relative_to(REPO_ROOT).as_posix() for path in bench_dag_files()]

    for dag_file in dag_files:
        stem = Path(dag_file).stem
        assert f"\n## {stem}\n" in generated, f"no section for {dag_file}"
        assert f"[{dag_file}](../{dag_file})" in generated
    for sync_yaml in sorted((REPO_ROOT / "include" / "automations").glob("*.yaml")):
        assert f"include/automations/{sync_yaml.name}" in generated


def test_generating_twice_gives_the_same_bytes(generated: str) -> None:
    assert build(REPO_ROOT) == generated


def test_a_stale_catalog_fails_the_check_with_a_diff(
    generated: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "dags.md"
    stale.write_text(generated.replace("| **Catchup** | off |", "| **Catchup** | on |", 1))

    assert main(["--check", "--output", str(stale)]) == EXIT_STALE

    out, err = capsys.readouterr()
    assert "-| **Catchup** | on |\n+| **Catchup** | off |\n" in out
    assert "is stale: run `make catalog`" in err
    assert stale_diff(generated, generated, str(CATALOG)) == ""


def test_writing_then_checking_agrees(tmp_path: Path) -> None:
    output = tmp_path / "docs" / "dags.md"

    assert main(["--check", "--output", str(output)]) == EXIT_STALE  # missing counts as stale
    assert main(["--output", str(output)]) == EXIT_OK
    assert main(["--check", "--output", str(output)]) == EXIT_OK


def test_dag_files_that_do_not_import_stop_the_catalog(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "broken_dag.py").write_text(
        "from airflow.sdk import DAG\nraise RuntimeError('this DAG file is broken')\n"
    )

    assert main(["--root", str(tmp_path)]) == EXIT_BROKEN_DAGS

    err = capsys.readouterr().err
    assert "broken_dag.py" in err
    assert "this DAG file is broken" in err
    assert not (tmp_path / "docs").exists()


def test_tasks_are_listed_upstream_first_with_stable_ties() -> None:
    with DAG("diamond", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
        start, left, right, join = (
            EmptyOperator(task_id=name) for name in ("start", "z_left", "a_right", "join")
        )
        start >> [left, right] >> join

    assert [task.task_id for task in tasks_in_dependency_order(dag)] == ["start", "a_right", "z_left", "join"]


@pytest.mark.parametrize(
    ("schedule", "text"),
    [
        ("@hourly", "`0 * * * *` (UTC), at each tick"),
        (None, "manual only"),
        ([ORDERS], "on updates to `x-table://warehouse/sales/orders`"),
        (
            ORDERS & CUSTOMERS,
            "on updates to (`x-table://warehouse/sales/orders` and `x-table://warehouse/crm/customers`)",
        ),
    ],
)
def test_schedules_are_described(schedule: object, text: str) -> None:
    dag = DAG("scheduled", schedule=schedule, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"))

    assert schedule_text(dag.timetable) == text


def test_first_paragraph_skips_headings_and_joins_lines() -> None:
    doc = "\n# title\n\nFirst line\n  second line.\n\n## Runbook\n- step\n"

    assert first_paragraph(doc) == "First line second line."
    assert first_paragraph("# only a heading\n") == ""


def test_retries_read_like_the_backoff_they_configure() -> None:
    default_args = {
        "retries": 3,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
    }

    assert retries_text(default_args) == "3, first after 30 s, then x2 each time, at most 10 min apart"
    assert retries_text({}) == "0"
