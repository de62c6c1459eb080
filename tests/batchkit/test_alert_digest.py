"""The tier-3 alert digest end to end: real Postgres (the session's warehouse), a real SMTP server
(aiosmtpd) on loopback that a test can stop and start again on the same port, the real SMTP hook.

Tier-3 alerts go through batchkit.alerts.send_logged exactly as a failure callback sends them, land in
batch_meta.alert_digest, and batchkit.alerts.send_alert_digests (what platform_alert_digest's task runs)
sends them. The last test runs the DAG file itself with dag.test().
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pendulum
import psycopg
import pytest
import structlog

from batchkit.alerts import (
    DIGEST_LEDGER_PREFIX,
    AlertRoute,
    alert_payload,
    error_excerpt,
    send_alert_digests,
    send_logged,
    with_route_details,
)
from batchkit.ledger import LedgerStatus
from tests.batchkit.test_alerts import SLACK_TOKEN, SmtpServer, _json_receiver, running_smtp
from tests.dagrun import parse_dag, returned, run_dag
from tools import REPO_ROOT

RECIPIENTS = "oncall@example.test, data@example.test"
RUNBOOK_LINE = "Check the partner's status page, then clear the task."
REPO_DAG = REPO_ROOT / "dags" / "platform" / "platform_alert_digest.py"


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    # Only the channels a test configures (a row the settings tests applied to the metadata DB loses).
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS_SLACK", json.dumps({"conn_type": "slackwebhook"}))
    with running_smtp(monkeypatch, RECIPIENTS) as server:
        yield server


@pytest.fixture
def queue(warehouse: psycopg.Connection) -> psycopg.Connection:
    """The warehouse with an empty digest queue: send_alert_digests sends every unsent entry, and
    other tests of this session (one warehouse database per pytest process) queue tier-3 alerts too."""
    from batchkit.alerts import ensure_alert_log

    ensure_alert_log(warehouse)
    warehouse.execute("DELETE FROM batch_meta.alert_digest WHERE sent_at IS NULL")
    return warehouse


def _failure(dag_id: str, error: BaseException, *, run_id: str, task_id: str = "extract_stage") -> dict:
    return alert_payload(
        "task_failed",
        dag_id=dag_id,
        run_id=run_id,
        url=f"http://localhost:8080/dags/{dag_id}/runs/{run_id}/tasks/{task_id}?try_number=3",
        data_interval_start=datetime(2026, 2, 28, 3, tzinfo=UTC),
        data_interval_end=datetime(2026, 3, 1, 3, tzinfo=UTC),
        task_id=task_id,
        error=error_excerpt(error),
        try_number=3,
        max_tries=2,
    )


def _tiered(tier: str) -> AlertRoute:
    return AlertRoute().routed(tier=tier, runbook=RUNBOOK_LINE)


def _alert(payload: dict, tier: str = "tier:3", *, warehouse_conn_id: str = "warehouse") -> str:
    route = _tiered(tier)
    return send_logged(with_route_details(payload, route), route, warehouse_conn_id, timedelta(minutes=60))


def _parts(message: EmailMessage) -> dict[str, str]:
    return {part.get_content_type(): part.get_content() for part in message.walk() if not part.is_multipart()}


def _digest_rows(conn: psycopg.Connection, dag_id: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        """
        SELECT run_id, repeats, batch IS NOT NULL, sent_at IS NOT NULL
          FROM batch_meta.alert_digest WHERE dag_id = %s ORDER BY id
        """,
        (dag_id,),
    ).fetchall()


def _ledger_keys(conn: psycopg.Connection) -> int:
    from batchkit.ledger import ensure_ledger

    ensure_ledger(conn)
    (count,) = conn.execute(
        "SELECT count(*) FROM batch_meta.side_effects WHERE effect_key LIKE %s", (DIGEST_LEDGER_PREFIX + "%",)
    ).fetchone()
    return count


def test_two_failures_and_a_repeat_make_one_email_listing_two_entries_and_a_rerun_sends_nothing(
    smtp: SmtpServer, queue: psycopg.Connection
) -> None:
    dag_id = f"bk_digest_{uuid.uuid4().hex[:8]}"
    outcomes = [
        _alert(_failure(dag_id, RuntimeError("checksum <mismatch> in batch 12\nsecond line"), run_id="r1")),
        _alert(_failure(dag_id, KeyError("order 9f8e7d6c5b4a"), run_id="r2", task_id="merge")),
        # The same signature as r1 (another batch number): a repeat within the window.
        _alert(_failure(dag_id, RuntimeError("checksum <mismatch> in batch 47\nsecond line"), run_id="r3")),
    ]

    assert outcomes == ["queued", "queued", "suppressed"]
    assert smtp.wait_for(1, timeout=1) == [], "tier-3 alerts wait for the digest"
    assert _digest_rows(queue, dag_id) == [("r1", 1, False, False), ("r2", 0, False, False)]
    log_rows = queue.execute(
        "SELECT run_id, outcome, channels FROM batch_meta.alert_log WHERE dag_id = %s ORDER BY id", (dag_id,)
    ).fetchall()
    assert log_rows == [("r1", "sent", ["digest"]), ("r2", "sent", ["digest"]), ("r3", "suppressed", None)]

    [delivery] = send_alert_digests(queue, claimed_by="scheduled__2026-03-01T04:05:00+00:00")

    [message] = smtp.wait_for(1)
    assert (delivery.status, delivery.entries) == (LedgerStatus.PERFORMED, 2)
    assert delivery.recipients == ("data@example.test", "oncall@example.test")
    assert sorted(smtp.envelopes[0][1]) == ["data@example.test", "oncall@example.test"]
    assert message["From"] == "airflow-alerts@example.test"
    assert message["Subject"] == f"[airflow] [tier:3] Alert digest: 2 alerts (3 occurrences) from {dag_id}"
    assert message.get_content_type() == "multipart/alternative"
    parts = _parts(message)
    assert list(parts) == ["text/plain", "text/html"]
    text, body = parts["text/plain"], parts["text/html"]
    first, second = text.split(f"1. Task failed: {dag_id}.extract_stage")[1].split(
        f"2. Task failed: {dag_id}.merge"
    )
    for expected in (
        "Run:      r1",
        "Interval: 2026-02-28T03:00:00+00:00 → 2026-03-01T03:00:00+00:00",
        "Error:    RuntimeError: checksum <mismatch> in batch 12",
        f"Log:      http://localhost:8080/dags/{dag_id}/runs/r1/tasks/extract_stage?try_number=3",
        f"Runbook:  {RUNBOOK_LINE}",
        "Repeats:  1 more within the dedup window (last at ",
    ):
        assert expected in first, (expected, first)
    assert "second line" not in text, "only the error message's first line"
    assert "Run:      r2" in second
    assert "Error:    KeyError: 'order 9f8e7d6c5b4a'" in second
    assert "Repeats:  none" in second
    assert "checksum &lt;mismatch&gt; in batch 12" in body
    assert f'href="http://localhost:8080/dags/{dag_id}/runs/r2/tasks/merge?try_number=3"' in body
    assert RUNBOOK_LINE.replace("'", "&#x27;") in body
    assert _digest_rows(queue, dag_id) == [("r1", 1, True, True), ("r2", 0, True, True)]
    (state, result) = queue.execute(
        "SELECT state, result FROM batch_meta.side_effects WHERE effect_key = %s",
        (DIGEST_LEDGER_PREFIX + delivery.batch,),
    ).fetchone()
    assert state == "done"
    assert len(result["entries"]) == 2

    assert send_alert_digests(queue, claimed_by="scheduled__2026-03-01T05:05:00+00:00") == []
    assert len(smtp.wait_for(2, timeout=1)) == 1, "a second run sends nothing"


def test_a_send_failure_marks_nothing_and_the_next_run_sends_it_once(
    smtp: SmtpServer, queue: psycopg.Connection
) -> None:
    dag_id = f"bk_digest_down_{uuid.uuid4().hex[:8]}"
    assert _alert(_failure(dag_id, RuntimeError("boom"), run_id="r1")) == "queued"
    smtp.stop()

    with pytest.raises(ConnectionRefusedError), structlog.testing.capture_logs() as logs:
        send_alert_digests(queue, claimed_by="run_1")

    [failed] = [entry for entry in logs if entry["event"] == "alert_digest_send_failed"]
    assert _digest_rows(queue, dag_id) == [("r1", 0, True, False)], "claimed, not sent"
    (state, last_error) = queue.execute(
        "SELECT state, last_error FROM batch_meta.side_effects WHERE effect_key = %s",
        (DIGEST_LEDGER_PREFIX + failed["batch"],),
    ).fetchone()
    assert state == "claimed"
    assert last_error.startswith("ConnectionRefusedError")

    smtp.start()
    # Queued after the failed run: it goes out in its own batch, the failed one as it was claimed.
    assert _alert(_failure(dag_id, ValueError("bad row"), run_id="r2")) == "queued"

    deliveries = send_alert_digests(queue, claimed_by="run_2")

    assert [(d.batch == failed["batch"], d.entries, d.status) for d in deliveries] == [
        (True, 1, LedgerStatus.PERFORMED),
        (False, 1, LedgerStatus.PERFORMED),
    ]
    messages = smtp.wait_for(2)
    texts = [_parts(m)["text/plain"] for m in messages]
    assert ["Run:      r1" in t for t in texts] == [True, False]
    assert ["Run:      r2" in t for t in texts] == [False, True]
    assert _digest_rows(queue, dag_id) == [("r1", 0, True, True), ("r2", 0, True, True)]

    assert send_alert_digests(queue, claimed_by="run_2") == [], "a retry of the same run sends nothing"
    assert len(smtp.wait_for(3, timeout=1)) == 2


def test_a_dry_run_renders_and_logs_the_digest_but_sends_and_marks_nothing(
    smtp: SmtpServer, queue: psycopg.Connection
) -> None:
    dag_id = f"bk_digest_dry_{uuid.uuid4().hex[:8]}"
    assert _alert(_failure(dag_id, RuntimeError("boom"), run_id="r1")) == "queued"

    keys_before = _ledger_keys(queue)

    with structlog.testing.capture_logs() as logs:
        [preview] = send_alert_digests(queue, claimed_by="dry", dry_run=True)

    assert (preview.status, preview.entries, preview.batch) == (LedgerStatus.DRY_RUN, 1, None)
    [logged] = [entry for entry in logs if entry["event"] == "alert_digest_preview"]
    assert f"1. Task failed: {dag_id}.extract_stage" in logged["text"]
    assert logged["subject"] == preview.subject
    assert smtp.wait_for(1, timeout=1) == []
    assert _digest_rows(queue, dag_id) == [("r1", 0, False, False)], "not claimed, not sent"
    assert _ledger_keys(queue) == keys_before, "a dry run claims no ledger key"

    [sent] = send_alert_digests(queue, claimed_by="real")
    assert sent.subject == preview.subject
    assert len(smtp.wait_for(1)) == 1


def test_tier_1_and_tier_2_alerts_still_go_out_at_once_and_are_not_queued(
    smtp: SmtpServer, queue: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _json_receiver() as pager, _json_receiver(answer=b"ok") as slack:
        monkeypatch.setenv("AIRFLOW_CONN_ALERTS_WEBHOOK", pager.url)
        monkeypatch.setenv(
            "AIRFLOW_CONN_ALERTS_SLACK",
            json.dumps({"conn_type": "slackwebhook", "host": slack.url, "password": SLACK_TOKEN}),
        )
        dag_1, dag_2 = (f"bk_digest_t{n}_{uuid.uuid4().hex[:8]}" for n in (1, 2))

        assert _alert(_failure(dag_1, RuntimeError("boom"), run_id="r1"), "tier:1") == "sent"
        assert _alert(_failure(dag_2, RuntimeError("boom"), run_id="r1"), "tier:2") == "sent"

        assert [r.body["dag_id"] for r in pager.wait_for(1)] == [dag_1]
        assert sorted(r.body["text"].split(": ")[1].split(".")[0] for r in slack.wait_for(2)) == [
            dag_1,
            dag_2,
        ]
    assert _digest_rows(queue, dag_1) == []
    assert _digest_rows(queue, dag_2) == []
    assert send_alert_digests(queue, claimed_by="run") == []
    assert smtp.wait_for(1, timeout=1) == []


def test_a_tier_3_alert_is_emailed_at_once_while_the_warehouse_is_down(
    smtp: SmtpServer, queue: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv(
        "AIRFLOW_CONN_DOWN_WAREHOUSE",
        json.dumps(
            {"conn_type": "postgres", "host": "127.0.0.1", "port": closed_port, "schema": "x", "login": "x"}
        ),
    )
    dag_id = f"bk_digest_whdown_{uuid.uuid4().hex[:8]}"

    with structlog.testing.capture_logs() as logs:
        outcome = _alert(
            _failure(dag_id, RuntimeError("boom"), run_id="r1"), warehouse_conn_id="down_warehouse"
        )

    assert outcome == "sent_without_dedup"
    [message] = smtp.wait_for(1)
    assert message["Subject"] == f"[airflow] [tier:3] Task failed: {dag_id}.extract_stage (RuntimeError)"
    [warning] = [entry for entry in logs if entry["event"] == "alert_sent_without_dedup"]
    assert warning["channels"] == ["email"]
    assert _digest_rows(queue, dag_id) == []


@pytest.mark.slow
def test_the_dag_sends_the_digest_and_its_dry_run_does_not(
    smtp: SmtpServer, queue: psycopg.Connection
) -> None:
    dag = parse_dag(REPO_DAG, "platform_alert_digest")
    dag_id = f"bk_digest_dag_{uuid.uuid4().hex[:8]}"
    assert _alert(_failure(dag_id, RuntimeError("boom"), run_id="r1")) == "queued"

    dry = run_dag(dag, pendulum.datetime(2026, 3, 1, 4, 5, tz="UTC"), {"dry_run": True})

    assert dry.state == "success"
    [preview] = returned(dry, "send_digest")
    assert (preview["status"], preview["entries"], preview["batch"]) == ("dry-run", 1, None)
    assert smtp.wait_for(1, timeout=1) == []
    assert _digest_rows(queue, dag_id) == [("r1", 0, False, False)]

    real = run_dag(dag, pendulum.datetime(2026, 3, 1, 5, 5, tz="UTC"))

    assert real.state == "success"
    [sent] = returned(real, "send_digest")
    assert (sent["status"], sent["entries"], sent["subject"]) == ("performed", 1, preview["subject"])
    [message] = smtp.wait_for(1)
    assert f"1. Task failed: {dag_id}.extract_stage" in _parts(message)["text/plain"]
    assert _digest_rows(queue, dag_id) == [("r1", 0, True, True)]
