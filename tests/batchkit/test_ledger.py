"""batchkit.ledger against the session's real warehouse database."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from batchkit.ledger import LedgerStatus, ensure_ledger, perform_once
from batchkit.sql_files import INCLUDE_DIR_ENV, include_dir, resolve_sql_path


@pytest.fixture
def key() -> str:
    return f"test:{uuid.uuid4()}"


@pytest.fixture
def second_conn(warehouse_conninfo: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(warehouse_conninfo, autocommit=True) as conn:
        yield conn


def _row(conn: psycopg.Connection, key: str) -> tuple | None:
    return conn.execute(
        "SELECT state, attempts, result, last_error FROM batch_meta.side_effects WHERE effect_key = %s",
        (key,),
    ).fetchone()


class Recorder:
    """An action that counts its calls and can be told to fail or to wait for a signal."""

    def __init__(self, *, fail: bool = False, gate: threading.Event | None = None) -> None:
        self.calls = 0
        self.fail = fail
        self.gate = gate
        self.started = threading.Event()

    def __call__(self) -> dict:
        self.calls += 1
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if self.fail:
            raise ConnectionError("remote refused")
        return {"sent_to": "partner-sftp", "call": self.calls}


def test_three_retries_perform_the_side_effect_once(warehouse: psycopg.Connection, key: str) -> None:
    action = Recorder()
    outcomes = [perform_once(warehouse, key, action) for _ in range(3)]

    assert action.calls == 1
    assert [o.status for o in outcomes] == [
        LedgerStatus.PERFORMED,
        LedgerStatus.SKIPPED,
        LedgerStatus.SKIPPED,
    ]
    assert outcomes[0].already_done is False
    assert all(o.result == {"sent_to": "partner-sftp", "call": 1} for o in outcomes)
    assert outcomes[2].last_sent_at == outcomes[0].last_sent_at
    assert _row(warehouse, key) == ("done", 1, {"sent_to": "partner-sftp", "call": 1}, None)


def test_force_performs_again_and_counts_the_attempt(warehouse: psycopg.Connection, key: str) -> None:
    action = Recorder()
    first = perform_once(warehouse, key, action)
    forced = perform_once(warehouse, key, action, force=True)

    assert action.calls == 2
    assert forced.status is LedgerStatus.PERFORMED
    assert forced.already_done is True
    assert forced.attempts == 2
    assert forced.last_sent_at > first.last_sent_at
    first_sent, last_sent = warehouse.execute(
        "SELECT first_sent_at, last_sent_at FROM batch_meta.side_effects WHERE effect_key = %s", (key,)
    ).fetchone()
    assert first_sent == first.last_sent_at
    assert last_sent == forced.last_sent_at


def test_failed_action_leaves_the_key_retryable(warehouse: psycopg.Connection, key: str) -> None:
    failing = Recorder(fail=True)
    with pytest.raises(ConnectionError, match="remote refused"):
        perform_once(warehouse, key, failing)

    state, attempts, result, last_error = _row(warehouse, key)
    assert (state, attempts, result) == ("claimed", 0, None)
    assert last_error == "ConnectionError: remote refused"

    retry = Recorder()
    outcome = perform_once(warehouse, key, retry)
    assert outcome.status is LedgerStatus.PERFORMED
    assert retry.calls == 1
    assert _row(warehouse, key)[:2] == ("done", 1)


def test_concurrent_attempts_from_two_connections_perform_once(
    warehouse: psycopg.Connection, second_conn: psycopg.Connection, key: str
) -> None:
    gate = threading.Event()
    first_action = Recorder(gate=gate)
    second_action = Recorder()
    results: dict[str, object] = {}

    def attempt(name: str, conn: psycopg.Connection, action: Recorder) -> None:
        results[name] = perform_once(conn, key, action)

    first = threading.Thread(target=attempt, args=("first", warehouse, first_action))
    first.start()
    # The first attempt holds the key (inside its action) before the second one starts.
    assert first_action.started.wait(10)
    second = threading.Thread(target=attempt, args=("second", second_conn, second_action))
    second.start()
    second.join(timeout=1)
    assert second.is_alive(), "the second attempt must wait for the key, not run alongside the first"

    gate.set()
    first.join(10)
    second.join(10)
    assert results["first"].status is LedgerStatus.PERFORMED
    assert results["second"].status is LedgerStatus.SKIPPED
    assert (first_action.calls, second_action.calls) == (1, 0)


def test_concurrent_attempt_performs_when_the_first_one_fails(
    warehouse: psycopg.Connection, second_conn: psycopg.Connection, key: str
) -> None:
    gate = threading.Event()
    failing = Recorder(fail=True, gate=gate)
    second_action = Recorder()
    results: dict[str, object] = {}

    def first_attempt() -> None:
        with pytest.raises(ConnectionError):
            perform_once(warehouse, key, failing)

    def second_attempt() -> None:
        results["second"] = perform_once(second_conn, key, second_action)

    first = threading.Thread(target=first_attempt)
    first.start()
    assert failing.started.wait(10)
    second = threading.Thread(target=second_attempt)
    second.start()
    gate.set()
    first.join(10)
    second.join(10)

    assert results["second"].status is LedgerStatus.PERFORMED
    assert (failing.calls, second_action.calls) == (1, 1)
    assert _row(warehouse, key)[:2] == ("done", 1)


def test_dry_run_calls_nothing_and_records_nothing(warehouse: psycopg.Connection, key: str) -> None:
    action = Recorder()
    outcome = perform_once(warehouse, key, action, dry_run=True)

    assert outcome.status is LedgerStatus.DRY_RUN
    assert outcome.already_done is False
    assert action.calls == 0
    assert _row(warehouse, key) is None

    perform_once(warehouse, key, action)
    after = perform_once(warehouse, key, action, dry_run=True, force=True)
    assert after.status is LedgerStatus.DRY_RUN
    assert after.already_done is True
    assert action.calls == 1
    assert _row(warehouse, key)[:2] == ("done", 1)


def test_connection_inside_a_transaction_is_refused(warehouse_conninfo: str, key: str) -> None:
    with psycopg.connect(warehouse_conninfo) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(ValueError, match="outside any transaction"):
            perform_once(conn, key, Recorder())


def test_non_autocommit_connection_commits_its_record(
    warehouse_conninfo: str, warehouse: psycopg.Connection, key: str
) -> None:
    with psycopg.connect(warehouse_conninfo) as conn:
        perform_once(conn, key, Recorder())
        conn.rollback()
    assert _row(warehouse, key)[:2] == ("done", 1)


def test_ddl_is_idempotent_and_include_dir_is_overridable(
    warehouse: psycopg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_ledger(warehouse)
    ensure_ledger(warehouse)
    assert warehouse.execute("SELECT to_regclass('batch_meta.side_effects')").fetchone() == (
        "batch_meta.side_effects",
    )
    assert (include_dir() / "sql" / "migrations" / "0001_batch_meta_baseline.sql").is_file()

    monkeypatch.setenv(INCLUDE_DIR_ENV, str(tmp_path))
    assert resolve_sql_path("sql/x.sql") == tmp_path / "sql" / "x.sql"
    assert resolve_sql_path(tmp_path / "abs.sql") == tmp_path / "abs.sql"
