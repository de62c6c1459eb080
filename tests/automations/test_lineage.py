"""OpenLineage: a sync run emits source endpoint -> warehouse table lineage through the provider.

The run happens in its own interpreter (tests/automations/observed_run.py) with the provider's file
transport configured, because the provider registers its listener only if a transport is configured
when plugins load; the test session has none, so every other test runs with OpenLineage disabled.
The events are the real ones the listener emits after each task, read back from the transport's file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchkit.sync_spec import load_spec, spec_path
from tests.automations.observed_run import run_sync_in_subprocess
from tests.automations.test_sync_dags import SYNC_DAG_FILES, Sync, at_cron_tick
from tests.upstream import Upstream

DAG_ID = "crm_customers_sync"
NAMESPACE = "batch-automation-test"


def lineage_env(events_file: Path) -> dict[str, str]:
    return {
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events_file), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": NAMESPACE,
    }


def read_events(events_file: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]


def datasets(event: dict[str, Any], side: str) -> list[tuple[str, str]]:
    return [(d["namespace"], d["name"]) for d in event.get(side, [])]


@pytest.mark.slow
def test_a_sync_run_emits_endpoint_to_table_lineage(
    tmp_path: Path, upstream: Upstream, warehouse_conninfo: str, airflow_db: str
) -> None:
    import psycopg

    sync = Sync(spec=load_spec(spec_path(DAG_ID)), dag=None)
    logical_date = at_cron_tick(sync, (2026, 3, 10))
    events_file = tmp_path / "openlineage.jsonl"

    run = run_sync_in_subprocess(SYNC_DAG_FILES[DAG_ID], DAG_ID, logical_date, lineage_env(events_file))

    events = read_events(events_file)
    completed = {
        event["job"]["name"]: event
        for event in events
        if event["eventType"] == "COMPLETE" and event["job"]["namespace"] == NAMESPACE
    }
    source = (upstream.url, sync.endpoint)
    info = psycopg.conninfo.conninfo_to_dict(warehouse_conninfo)
    table = (f"postgres://{info['host']}:{info.get('port', 5432)}", f"{info['dbname']}.{sync.table}")
    for task_id in ("extract_stage", "merge"):
        event = completed[f"{DAG_ID}.{task_id}"]
        assert datasets(event, "inputs") == [source], event["inputs"]
        assert datasets(event, "outputs") == [table], event["outputs"]
    # The DAG run itself is reported too, so a lineage UI groups the tasks under the sync.
    assert "COMPLETE" in {e["eventType"] for e in events if e["job"]["name"] == DAG_ID}
    assert "OpenLineage" not in "".join(
        line for line in (run.stderr + run.stdout).splitlines() if "WARNING" in line or "ERROR" in line
    )
