"""batchkit.alerts end to end: real Airflow runs, real receivers on loopback, real Postgres.

Each channel is received by something speaking its protocol: the pager webhook and a Slack-incoming-
webhook-shaped endpoint are HTTP servers in a thread, email is a real SMTP server (aiosmtpd).

The failure alert is exercised through dag.test(), which runs the task's retries inline (it loops until
the run finishes, re-scheduling an UP_FOR_RETRY task once its retry delay has passed) and calls the
callbacks from the same task-runner finalize() a worker uses. The deadline callback is called here with
the context shape the triggerer hands it; tests/e2e proves the scheduler and triggerer really fire it.

"Warehouse down" is a real Postgres server (tools.metadb.EmbeddedPostgres in tmp_path) that the test
stops and restarts, and "warehouse hung" a real socket that accepts connections and never answers.
"""

from __future__ import annotations

import asyncio
import html
import json
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pendulum
import psycopg
import pytest
import structlog
from airflow.sdk import DAG

from batchkit.alert_channels import send_report
from batchkit.alerts import (
    ERROR_EXCERPT_CHARS,
    WAREHOUSE_CONNECT_TIMEOUT_SECONDS,
    AlertRoute,
    alert_payload,
    deadline_missed,
    error_excerpt,
    error_signature,
    send_logged,
    send_unless_recent,
    silence,
    with_route_details,
)
from batchkit.migrations import migrate
from tools.metadb import EmbeddedPostgres, PgServer, ensure_database

RUNBOOK = "Fails on purpose.\n\n## Runbook\nNothing to do: this DAG exists for the test suite.\n"
TAGS = ["domain:sales", "kind:sync", "tier:3"]
# A Slack incoming-webhook token's shape (team/bot/secret), for the loopback receivers.
SLACK_TOKEN = "T0/B0/X0"  # pragma: allowlist secret


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    at: datetime
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Webhook:
    url: str
    requests: list[Received] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.requests) >= count, timeout)
        return list(self.requests)


@contextmanager
def _json_receiver(answer: bytes = b"") -> Iterator[Webhook]:
    """A JSON-accepting HTTP receiver in a thread; answers 200 with `answer` (Slack answers `ok`)."""
    hook: Webhook

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with hook.arrived:
                hook.requests.append(Received(self.path, body, datetime.now(UTC), dict(self.headers)))
                hook.arrived.notify_all()
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook = Webhook(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _only_the_channels_a_test_configures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slack and email are configured by their fixtures only (a row the settings tests applied to the
    metadata DB is overridden by these empty environment connections)."""
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS_SLACK", json.dumps({"conn_type": "slackwebhook"}))
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS_SMTP", json.dumps({"conn_type": "smtp"}))
    monkeypatch.delenv("AIRFLOW_VAR_BATCH_ALERT_EMAIL_TO", raising=False)


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Webhook]:
    """The pager webhook: a JSON receiver wired up as the `alerts_webhook` connection."""
    with _json_receiver() as hook:
        monkeypatch.setenv("AIRFLOW_CONN_ALERTS_WEBHOOK", hook.url)
        yield hook


SLACK_TOKEN_PATH = "/services/T0TEST/B0TEST/" + uuid.uuid4().hex


@pytest.fixture
def slack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Webhook]:
    """A Slack-incoming-webhook-shaped receiver as the `alerts_slack` connection (slackwebhook type: the
    host is the base URL, the password the token path after it, as for hooks.slack.com/services)."""
    with _json_receiver(answer=b"ok") as hook:
        monkeypatch.setenv(
            "AIRFLOW_CONN_ALERTS_SLACK",
            json.dumps({"conn_type": "slackwebhook", "host": hook.url, "password": SLACK_TOKEN_PATH}),
        )
        yield hook


@dataclass
class SmtpServer:
    """aiosmtpd on a fixed loopback port; stop() makes the port refuse connections (a relay that is
    down), start() brings it back where the connection points."""

    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)  # (mail from, rcpt tos)
    arrived: threading.Condition = field(default_factory=threading.Condition)
    controller: Any = None

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        server = self

        class Handler:
            async def handle_DATA(self, smtp: Any, session: Any, envelope: Any) -> str:
                message = BytesParser(policy=policy.default).parsebytes(envelope.original_content)
                with server.arrived:
                    server.messages.append(message)
                    server.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
                    server.arrived.notify_all()
                return "250 Message accepted for delivery"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
        self.controller = None
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", self.port)) != 0, "the stopped server still answers"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.messages) >= count, timeout)
        return list(self.messages)


@contextmanager
def running_smtp(monkeypatch: pytest.MonkeyPatch, recipients: str) -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on loopback as the `alerts_smtp` connection, plain SMTP (no TLS);
    alert recipients from Variable batch_alert_email_to."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    server = SmtpServer(port)
    server.start()
    monkeypatch.setenv(
        "AIRFLOW_CONN_ALERTS_SMTP",
        json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": port,
                "extra": {
                    "from_email": "airflow-alerts@example.test",
                    "disable_tls": True,
                    "disable_ssl": True,
                    "timeout": 5,
                    "retry_limit": 0,
                },
            }
        ),
    )
    monkeypatch.setenv("AIRFLOW_VAR_BATCH_ALERT_EMAIL_TO", recipients)
    try:
        yield server
    finally:
        if server.controller is not None:
            server.controller.stop()


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    with running_smtp(monkeypatch, "oncall@example.test, data@example.test") as server:
        yield server


FAILING_DAG_SOURCE = """
from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, task
from batchkit.alerts import FailureAlert
from batchkit.dag_factory import standard_dag

with standard_dag(
    {dag_id!r},
    owner="data-platform",
    tags={tags!r},
    schedule=CronDataIntervalTimetable("0 3 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md={doc_md!r},
    deadline=timedelta(hours=2),
    retries=2,
    # Backoff has a 1 s floor plus jitter, so each retry waits 1-2 s.
    retry_delay=timedelta(seconds=0),
    default_args_overrides={{"on_failure_callback": [FailureAlert(warehouse_conn_id={warehouse_conn_id!r})]}},
) as dag:

    @task
    def always_fails() -> None:
        raise RuntimeError("partner API returned 503")

    always_fails()
"""


@pytest.fixture
def dags_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A dags folder of its own, as the `dags-folder` bundle: dag.test() runs only DAGs that a bundle
    holds (it serializes them from there into the metadata DB)."""
    folder = tmp_path / "dags"
    folder.mkdir()
    bundle = {
        "name": "dags-folder",
        "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
        "kwargs": {"path": str(folder), "refresh_interval": 0},
    }
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps([bundle]))
    return folder


def _failing_dag(dags_folder: Path, dag_id: str, *, warehouse_conn_id: str = "warehouse") -> DAG:
    """Write the DAG file and parse it the way the dag processor does."""
    from airflow.dag_processing.dagbag import DagBag

    path = dags_folder / f"{dag_id}.py"
    path.write_text(
        FAILING_DAG_SOURCE.format(
            dag_id=dag_id, tags=TAGS, doc_md=RUNBOOK, warehouse_conn_id=warehouse_conn_id
        )
    )
    bag = DagBag(dag_folder=path)
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def _task_tries(dag_id: str, run_id: str) -> tuple[int, int, list[tuple[int, str]], datetime]:
    """(try_number, max_tries, earlier tries as (try, state), start of the last try) from the metadata DB."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        ti = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        ).one()
        history = session.execute(
            select(TaskInstanceHistory.try_number, TaskInstanceHistory.state)
            .where(TaskInstanceHistory.dag_id == dag_id, TaskInstanceHistory.run_id == run_id)
            .order_by(TaskInstanceHistory.try_number)
        ).all()
        return ti.try_number, ti.max_tries, [(t, str(s)) for t, s in history], ti.start_date


@pytest.mark.slow
def test_failure_alert_fires_once_after_the_last_retry_and_dedups_the_next_run(
    airflow_db: str, dags_folder: Path, webhook: Webhook, warehouse: psycopg.Connection
) -> None:
    dag_id = f"bk_alert_{uuid.uuid4().hex[:8]}"
    dag = _failing_dag(dags_folder, dag_id)

    first = dag.test(logical_date=pendulum.datetime(2026, 3, 1, 3, tz="UTC"))

    assert first.state == "failed"
    try_number, max_tries, earlier, last_try_started = _task_tries(dag_id, first.run_id)
    assert (try_number, max_tries) == (3, 2)
    # TaskInstanceHistory keeps each earlier try as it ended (3.3 records it as failed before the retry).
    assert [try_ for try_, _ in earlier] == [1, 2], f"the retries must really have run: {earlier}"

    [alert] = webhook.wait_for(1)
    assert alert.at > last_try_started, "the alert must come from the last try, not an earlier one"
    body = alert.body
    assert body["kind"] == "task_failed"
    assert (body["dag_id"], body["task_id"], body["run_id"]) == (dag_id, "always_fails", first.run_id)
    assert (body["try_number"], body["max_tries"]) == (3, 2)
    assert body["error"] == "RuntimeError: partner API returned 503"
    assert body["data_interval"] == {
        "start": first.data_interval_start.isoformat(),
        "end": first.data_interval_end.isoformat(),
    }
    assert unquote(body["url"]).endswith(
        f"/dags/{dag_id}/runs/{first.run_id}/tasks/always_fails?try_number=3"
    )

    second = dag.test(logical_date=pendulum.datetime(2026, 3, 2, 3, tz="UTC"))

    assert second.state == "failed"
    assert _task_tries(dag_id, second.run_id)[0] == 3
    assert len(webhook.wait_for(2, timeout=2)) == 1, "a second failure within the window must not alert"
    log = warehouse.execute(
        "SELECT run_id, outcome FROM batch_meta.alert_log WHERE dag_id = %s ORDER BY id", (dag_id,)
    ).fetchall()
    assert log == [(first.run_id, "sent"), (second.run_id, "suppressed")]


def _deadline_context(
    run_id: str, deadline_time: datetime, *, dag_id: str = "bk_nightly_export"
) -> dict[str, Any]:
    """The context shape Deadline.handle_miss() builds: the run as DAGRunResponse JSON + the deadline."""
    return {
        "dag_run": {
            "dag_run_id": run_id,
            "dag_id": dag_id,
            "queued_at": "2026-03-01T03:00:04Z",
            "data_interval_start": "2026-02-28T03:00:00Z",
            "data_interval_end": "2026-03-01T03:00:00Z",
            "state": "running",
        },
        "deadline": {"id": str(uuid.uuid4()), "deadline_time": deadline_time},
    }


def test_deadline_callback_posts_the_shared_payload(webhook: Webhook) -> None:
    deadline_time = datetime(2026, 3, 1, 5, 0, 4, tzinfo=UTC)
    context = _deadline_context("scheduled__2026-02-28T03:00:00+00:00", deadline_time)

    returned = asyncio.run(
        deadline_missed(
            context=context, **AlertRoute(endpoint="/alerts").as_kwargs(), deadline_interval_seconds=7200.0
        )
    )

    [alert] = webhook.wait_for(1)
    assert alert.path == "/alerts"
    # Airflow stores the return value in a text column (callback.output): a dict crashes the triggerer.
    assert returned == "sent"
    assert alert.body["kind"] == "deadline_missed"
    assert alert.body["dag_id"] == "bk_nightly_export"
    assert alert.body["run_id"] == "scheduled__2026-02-28T03:00:00+00:00"
    assert alert.body["deadline_time"] == "2026-03-01T05:00:04+00:00"
    assert alert.body["deadline_interval_seconds"] == 7200.0
    assert alert.body["data_interval"] == {"start": "2026-02-28T03:00:00Z", "end": "2026-03-01T03:00:00Z"}
    assert unquote(alert.body["url"]).endswith(
        "/dags/bk_nightly_export/runs/scheduled__2026-02-28T03:00:00+00:00"
    )


def test_a_webhook_secret_path_lives_in_the_password_and_never_leaves_in_a_payload(
    webhook: Webhook, monkeypatch: pytest.MonkeyPatch, warehouse: psycopg.Connection
) -> None:
    secret_path = f"/alerts/T0/B0/{uuid.uuid4().hex}"
    monkeypatch.setenv(
        "AIRFLOW_CONN_ALERTS_WEBHOOK",
        json.dumps({"conn_type": "http", "host": webhook.url, "password": secret_path}),
    )
    run_id = f"manual__{uuid.uuid4().hex}"
    # An error text that quotes the secret, as a connection error naming the URL would.
    payload = alert_payload(
        "task_failed",
        dag_id="bk_secret_probe",
        run_id=run_id,
        url=None,
        data_interval_start=None,
        data_interval_end=None,
        task_id="extract_stage",
        error=error_excerpt(ConnectionError(f"POST {webhook.url}{secret_path} failed: " + "x" * 2000)),
    )

    outcome = send_logged(payload, AlertRoute(), "warehouse", timedelta(minutes=60))

    [alert] = webhook.wait_for(1)
    assert outcome == "sent"
    assert alert.path == secret_path  # delivered to the secret path taken from the password
    assert secret_path not in json.dumps(alert.body)
    assert alert.body["error"].startswith(f"ConnectionError: POST {webhook.url}***")
    assert alert.body["error"].endswith("x…")  # cut before it was masked
    assert len(alert.body["error"]) <= ERROR_EXCERPT_CHARS
    (logged,) = warehouse.execute(
        "SELECT payload::text FROM batch_meta.alert_log WHERE run_id = %s", (run_id,)
    ).fetchone()
    assert secret_path not in logged


def test_a_silence_holds_alerts_until_it_expires(warehouse: psycopg.Connection) -> None:
    dag_id = f"bk_silenced_{uuid.uuid4().hex[:8]}"
    payload = {"kind": "task_failed", "dag_id": dag_id, "task_id": "load", "run_id": "r1"}
    sent: list[str] = []

    until = silence(warehouse, dag_id=dag_id, duration=timedelta(seconds=1), reason="source maintenance")
    assert not send_unless_recent(warehouse, payload, window=timedelta(0), send=lambda: sent.append("r1"))

    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.1)
    assert send_unless_recent(warehouse, payload, window=timedelta(0), send=lambda: sent.append("r2"))

    assert sent == ["r2"]
    outcomes = warehouse.execute(
        "SELECT outcome FROM batch_meta.alert_log WHERE dag_id = %s ORDER BY id", (dag_id,)
    ).fetchall()
    assert outcomes == [("silenced",), ("sent",)]


def test_a_silence_needs_a_reason_and_a_positive_duration(warehouse: psycopg.Connection) -> None:
    with pytest.raises(ValueError, match="reason"):
        silence(warehouse, dag_id="any", duration=timedelta(hours=1), reason=" ")
    with pytest.raises(ValueError, match="positive duration"):
        silence(warehouse, dag_id="any", duration=timedelta(0), reason="maintenance")


def test_deadline_callback_skips_a_run_that_already_failed_and_alerted(webhook: Webhook) -> None:
    context = _deadline_context("scheduled__2026-02-27T03:00:00+00:00", datetime(2026, 3, 1, 5, tzinfo=UTC))
    context["dag_run"]["state"] = "failed"

    returned = asyncio.run(deadline_missed(context=context, **AlertRoute(endpoint="/alerts").as_kwargs()))

    assert isinstance(returned, str)
    assert returned.startswith("skipped")
    assert webhook.wait_for(1, timeout=1) == []


# --- the warehouse down or hung: alerts still go out, once --------------------------------------------

THROWAWAY_WAREHOUSE_CONN_ID = "throwaway_warehouse"


@dataclass
class ThrowawayWarehouse:
    """A Postgres server of the test's own, as Airflow connection `throwaway_warehouse`: stop it to
    take the warehouse down, start it to bring it back (same socket, same data)."""

    embedded: EmbeddedPostgres
    server: PgServer
    dbname: str = "warehouse"

    def stop(self) -> None:
        self.embedded.stop()
        assert not self.embedded.is_running()

    def start(self) -> None:
        assert self.embedded.start() == self.server, "a restart must come back where the connection points"

    def alert_log(self, dag_id: str) -> list[tuple[str, str]]:
        with psycopg.connect(self.server.conninfo(self.dbname), autocommit=True) as conn:
            return conn.execute(
                "SELECT run_id, outcome FROM batch_meta.alert_log WHERE dag_id = %s ORDER BY id", (dag_id,)
            ).fetchall()


@pytest.fixture
def throwaway_warehouse(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThrowawayWarehouse]:
    # Not under tmp_path: the server runs as another user, who must traverse the parent folders, and
    # every pytest session start chmods /tmp/pytest-of-<user> back to 0700 (a concurrent session would
    # lock this server's own pg_ctl out of its data directory).
    data_root = Path(tempfile.mkdtemp(prefix="bk-alert-warehouse-"))
    embedded = EmbeddedPostgres(data_root / "pgdata")
    server = embedded.start()
    try:
        warehouse = ThrowawayWarehouse(embedded, server)
        ensure_database(server, warehouse.dbname)
        with psycopg.connect(server.conninfo(warehouse.dbname), autocommit=True) as conn:
            migrate(conn)
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{THROWAWAY_WAREHOUSE_CONN_ID.upper()}",
            server.airflow_connection_json(warehouse.dbname),
        )
        yield warehouse
    finally:
        embedded.stop()
        shutil.rmtree(data_root, ignore_errors=True)


def _events(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]


def _deadline_kwargs(warehouse_conn_id: str) -> dict[str, Any]:
    return {**AlertRoute(endpoint="/alerts").as_kwargs(), "warehouse_conn_id": warehouse_conn_id}


def test_deadline_alert_goes_out_while_the_warehouse_is_down_and_dedups_again_once_it_is_back(
    webhook: Webhook, throwaway_warehouse: ThrowawayWarehouse
) -> None:
    dag_id = f"bk_wh_down_{uuid.uuid4().hex[:8]}"
    deadline_time = datetime(2026, 3, 1, 5, tzinfo=UTC)
    kwargs = _deadline_kwargs(THROWAWAY_WAREHOUSE_CONN_ID)
    throwaway_warehouse.stop()

    started = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        returned = asyncio.run(
            deadline_missed(_deadline_context("run_1", deadline_time, dag_id=dag_id), **kwargs)
        )
    [alert] = webhook.wait_for(1)
    elapsed = time.monotonic() - started

    assert returned == "sent_without_dedup"
    assert alert.body["run_id"] == "run_1"
    assert len(webhook.wait_for(2, timeout=1)) == 1, "exactly one alert, not one per attempt"
    # A stopped server refuses at once: the alert is not held up by the connect timeout.
    assert elapsed < WAREHOUSE_CONNECT_TIMEOUT_SECONDS, f"the alert took {elapsed:.1f}s"
    [warning] = _events(logs, "alert_sent_without_dedup")
    assert warning["log_level"] == "warning"
    assert (warning["dag_id"], warning["run_id"]) == (dag_id, "run_1")
    assert f"warehouse {THROWAWAY_WAREHOUSE_CONN_ID!r} unavailable: OperationalError" in warning["reason"]
    # Recording it is best effort: the warehouse is still down, so that is logged and nothing raised.
    [not_recorded] = _events(logs, "alert_log_write_failed")
    assert not_recorded["run_id"] == "run_1"
    assert _events(logs, "alert_callback_failed") == []

    throwaway_warehouse.start()

    second = asyncio.run(deadline_missed(_deadline_context("run_2", deadline_time, dag_id=dag_id), **kwargs))
    third = asyncio.run(deadline_missed(_deadline_context("run_3", deadline_time, dag_id=dag_id), **kwargs))

    assert (second, third) == ("sent", "suppressed")
    assert [a.body["run_id"] for a in webhook.wait_for(3, timeout=2)] == ["run_1", "run_2"]
    assert throwaway_warehouse.alert_log(dag_id) == [("run_2", "sent"), ("run_3", "suppressed")]


@pytest.mark.slow
def test_failure_alert_goes_out_while_the_warehouse_is_down_and_is_recorded_once_it_is_back(
    airflow_db: str, dags_folder: Path, webhook: Webhook, throwaway_warehouse: ThrowawayWarehouse
) -> None:
    dag_id = f"bk_alert_wh_down_{uuid.uuid4().hex[:8]}"
    dag = _failing_dag(dags_folder, dag_id, warehouse_conn_id=THROWAWAY_WAREHOUSE_CONN_ID)
    throwaway_warehouse.stop()

    first = dag.test(logical_date=pendulum.datetime(2026, 3, 1, 3, tz="UTC"))

    assert first.state == "failed"
    [alert] = webhook.wait_for(1)
    assert (alert.body["kind"], alert.body["run_id"]) == ("task_failed", first.run_id)
    assert len(webhook.wait_for(2, timeout=1)) == 1, "exactly one alert while the warehouse is down"

    throwaway_warehouse.start()
    second = dag.test(logical_date=pendulum.datetime(2026, 3, 2, 3, tz="UTC"))

    assert second.state == "failed"
    assert [a.body["run_id"] for a in webhook.wait_for(2)] == [first.run_id, second.run_id]
    # The first alert could not be recorded (the warehouse was down), so the second one is not a
    # duplicate of a logged alert: it is sent, and logged as usual from now on.
    assert throwaway_warehouse.alert_log(dag_id) == [(second.run_id, "sent")]


@pytest.mark.slow
def test_a_hung_warehouse_delays_an_alert_only_by_the_connect_timeout(
    webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host that accepts the TCP connection and never answers: libpq alone would wait forever."""
    with socket.create_server(("127.0.0.1", 0)) as hung:
        monkeypatch.setenv(
            "AIRFLOW_CONN_HUNG_WAREHOUSE",
            PgServer(host="127.0.0.1", port=hung.getsockname()[1], user="postgres").airflow_connection_json(
                "warehouse"
            ),
        )
        context = _deadline_context("run_1", datetime(2026, 3, 1, 5, tzinfo=UTC), dag_id="bk_wh_hung")

        started = datetime.now(UTC)
        with structlog.testing.capture_logs() as logs:
            returned = asyncio.run(deadline_missed(context, **_deadline_kwargs("hung_warehouse")))
        [alert] = webhook.wait_for(1)

    assert returned == "sent_without_dedup"
    waited = (alert.at - started).total_seconds()
    assert WAREHOUSE_CONNECT_TIMEOUT_SECONDS <= waited < WAREHOUSE_CONNECT_TIMEOUT_SECONDS + 2, waited
    [warning] = _events(logs, "alert_sent_without_dedup")
    assert "timeout" in warning["reason"]


def test_a_callback_that_cannot_deliver_logs_the_error_and_returns(
    webhook: Webhook, monkeypatch: pytest.MonkeyPatch, warehouse: psycopg.Connection
) -> None:
    """Nothing listens on the webhook port: the error is logged with its traceback, never raised into
    the triggerer, and no `sent` row claims an alert that never went out."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS_WEBHOOK", f"http://127.0.0.1:{closed_port}")
    dag_id = f"bk_undeliverable_{uuid.uuid4().hex[:8]}"
    context = _deadline_context("run_1", datetime(2026, 3, 1, 5, tzinfo=UTC), dag_id=dag_id)

    with structlog.testing.capture_logs() as logs:
        returned = asyncio.run(deadline_missed(context, **AlertRoute(endpoint="/alerts").as_kwargs()))

    assert isinstance(returned, str)
    assert returned.startswith("failed: ConnectionError")
    [failed] = _events(logs, "alert_callback_failed")
    assert (failed["log_level"], failed["dag_id"], failed["run_id"]) == ("error", dag_id, "run_1")
    assert failed["error"].startswith("ConnectionError")
    assert failed["exc_info"], "the log line must carry the traceback"
    assert warehouse.execute(
        "SELECT count(*) FROM batch_meta.alert_log WHERE dag_id = %s", (dag_id,)
    ).fetchone() == (0,)


# --- channels: Slack, email, the pager webhook, routed by tier ----------------------------------------

RUNBOOK_LINE = "Check connection `demo_api` and the partner's status page, then clear the task."


def _failure(
    dag_id: str, error: BaseException, *, run_id: str = "scheduled__2026-03-01T03:00:00+00:00"
) -> dict:
    return alert_payload(
        "task_failed",
        dag_id=dag_id,
        run_id=run_id,
        url=f"http://localhost:8080/dags/{dag_id}/runs/{run_id}/tasks/extract_stage?try_number=3",
        data_interval_start=datetime(2026, 2, 28, 3, tzinfo=UTC),
        data_interval_end=datetime(2026, 3, 1, 3, tzinfo=UTC),
        task_id="extract_stage",
        error=error_excerpt(error),
        try_number=3,
        max_tries=2,
    )


def _tiered(tier: str) -> AlertRoute:
    return AlertRoute().routed(tier=tier, runbook=RUNBOOK_LINE)


def _send(payload: dict, route: AlertRoute) -> str:
    return send_logged(with_route_details(payload, route), route, "warehouse", timedelta(minutes=60))


def _slack_text(body: dict[str, Any]) -> str:
    """Every text of a Block Kit body, joined (what a reader sees)."""
    return json.dumps(body["blocks"], ensure_ascii=False)


def test_standard_dag_routes_both_alerts_by_the_tier_tag_with_the_runbook_line() -> None:
    from airflow.sdk import CronDataIntervalTimetable

    from batchkit.dag_factory import standard_dag

    doc = f"What it does.\n\n## Runbook\n\n- {RUNBOOK_LINE}\n- Then tell #sales.\n"
    dag = standard_dag(
        "bk_routing_probe",
        owner="data-platform",
        tags=["domain:sales", "kind:sync", "tier:1"],
        schedule=CronDataIntervalTimetable("0 3 * * *", timezone="UTC"),
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        doc_md=doc,
        deadline=timedelta(hours=1),
        alert_route=AlertRoute(slack_conn_id="sales_slack"),
    )

    [failure_alert] = dag.default_args["on_failure_callback"]
    assert failure_alert.route.channel_list() == ("pager", "slack")
    assert (failure_alert.route.tier, failure_alert.route.runbook) == ("tier:1", RUNBOOK_LINE)
    assert failure_alert.route.conn_id("slack") == "sales_slack"
    [deadline] = dag.deadline if isinstance(dag.deadline, list) else [dag.deadline]
    kwargs = deadline.callback.kwargs
    assert (kwargs["channels"], kwargs["tier"], kwargs["runbook"]) == (
        ["pager", "slack"],
        "tier:1",
        RUNBOOK_LINE,
    )
    assert kwargs["slack_conn_id"] == "sales_slack"
    json.dumps(kwargs)  # travels to the triggerer as JSON


def test_tier_1_pages_and_posts_to_slack_tier_2_only_slack_tier_3_queues_its_email_for_the_digest(
    webhook: Webhook, slack: Webhook, smtp: SmtpServer, warehouse: psycopg.Connection
) -> None:
    """Tier 3's email waits for platform_alert_digest (tests/batchkit/test_alert_digest.py sends it)."""
    dag_ids = {tier: f"bk_route_{tier[-1]}_{uuid.uuid4().hex[:6]}" for tier in ("tier:1", "tier:2", "tier:3")}
    outcomes = {
        tier: _send(_failure(dag_id, RuntimeError("boom")), _tiered(tier)) for tier, dag_id in dag_ids.items()
    }

    assert outcomes == {"tier:1": "sent", "tier:2": "sent", "tier:3": "queued"}
    slack.wait_for(2)
    [page] = webhook.wait_for(1)
    time.sleep(0.5)  # anything misrouted would have arrived by now
    assert (page.body["dag_id"], page.body["tier"]) == (dag_ids["tier:1"], "tier:1")
    assert [p.body["text"].split("bk_route_")[1][0] for p in slack.requests] == ["1", "2"]
    assert (len(webhook.requests), len(slack.requests), len(smtp.messages)) == (1, 2, 0)
    channels = dict(
        warehouse.execute(
            "SELECT dag_id, channels FROM batch_meta.alert_log WHERE dag_id = ANY(%s)",
            (list(dag_ids.values()),),
        ).fetchall()
    )
    assert channels == {
        dag_ids["tier:1"]: ["pager", "slack"],
        dag_ids["tier:2"]: ["slack"],
        dag_ids["tier:3"]: ["digest"],
    }
    queued = warehouse.execute(
        "SELECT dag_id, recipients, smtp_conn_id, sent_at FROM batch_meta.alert_digest WHERE dag_id = ANY(%s)",
        (list(dag_ids.values()),),
    ).fetchall()
    assert queued == [(dag_ids["tier:3"], ["oncall@example.test", "data@example.test"], "alerts_smtp", None)]


def test_slack_gets_an_incoming_webhook_body_with_block_kit(
    slack: Webhook, warehouse: psycopg.Connection
) -> None:
    dag_id = f"bk_slack_{uuid.uuid4().hex[:8]}"
    payload = _failure(dag_id, ConnectionError("partner API returned 503 <after> 3 tries & gave up"))

    assert _send(payload, _tiered("tier:2")) == "sent"

    [post] = slack.wait_for(1)
    assert post.path == SLACK_TOKEN_PATH  # the token path from the connection's password
    assert post.headers["Content-Type"].startswith("application/json")
    body = post.body
    # Slack requires `text` (the notification fallback) besides `blocks`; no legacy fields.
    assert set(body) >= {"text", "blocks"}
    assert not {"channel", "username", "icon_emoji"} & set(body)
    assert body["text"].startswith(f"Task failed: {dag_id}.extract_stage")
    assert "ConnectionError" in body["text"]
    types = [block["type"] for block in body["blocks"]]
    assert types[0] == "header"
    assert "actions" in types
    text = _slack_text(body)
    for expected in (
        f"*DAG*\\n{dag_id}",
        "*Task*\\nextract_stage",
        "*Run*\\nscheduled__2026-03-01T03:00:00+00:00",
        "*Interval*\\n2026-02-28T03:00:00+00:00 → 2026-03-01T03:00:00+00:00",
        "*Error class*\\nConnectionError",
        f"*Runbook:* {RUNBOOK_LINE}",
        "&lt;after&gt; 3 tries &amp; gave up",  # mrkdwn control characters escaped
    ):
        assert expected in text, (expected, text)
    [button] = next(b for b in body["blocks"] if b["type"] == "actions")["elements"]
    assert button["url"] == payload["url"]
    assert SLACK_TOKEN_PATH not in json.dumps(body)


def test_a_missed_deadline_reaches_slack_with_the_run_and_its_deadline(
    slack: Webhook, webhook: Webhook
) -> None:
    dag_id = f"bk_slack_deadline_{uuid.uuid4().hex[:8]}"
    context = _deadline_context("run_1", datetime(2026, 3, 1, 5, tzinfo=UTC), dag_id=dag_id)

    returned = asyncio.run(
        deadline_missed(context, **_tiered("tier:2").as_kwargs(), deadline_interval_seconds=7200.0)
    )

    assert returned == "sent"
    [post] = slack.wait_for(1)
    assert post.body["text"].startswith(f"Deadline missed: {dag_id}")
    text = _slack_text(post.body)
    for expected in (
        f"*DAG*\\n{dag_id}",
        "*Run*\\nrun_1",
        "*Deadline*\\n2026-03-01T05:00:00+00:00",
        RUNBOOK_LINE,
    ):
        assert expected in text, (expected, text)
    [button] = next(b for b in post.body["blocks"] if b["type"] == "actions")["elements"]
    assert unquote(button["url"]).endswith(f"/dags/{dag_id}/runs/run_1")
    assert webhook.wait_for(1, timeout=0.5) == [], "tier:2 does not page"


def test_email_goes_through_a_real_smtp_server(smtp: SmtpServer, warehouse: psycopg.Connection) -> None:
    """An email channel outside the digest tiers sends at once (tier:3 email waits for the digest)."""
    dag_id = f"bk_mail_{uuid.uuid4().hex[:8]}"
    payload = _failure(dag_id, RuntimeError("checksum <mismatch> in batch 12"))
    route = AlertRoute(channels=("email",)).routed(tier="tier:2", runbook=RUNBOOK_LINE)

    assert _send(payload, route) == "sent"

    [message] = smtp.wait_for(1)
    assert message["Subject"] == f"[airflow] [tier:2] Task failed: {dag_id}.extract_stage (RuntimeError)"
    assert message["From"] == "airflow-alerts@example.test"
    assert smtp.envelopes[0][1] == ["oncall@example.test", "data@example.test"]
    [part] = [p for p in message.walk() if p.get_content_type() == "text/html"]
    body = part.get_content()
    assert f"<code>{dag_id}</code>" in body
    assert "checksum &lt;mismatch&gt; in batch 12" in body  # escaped, not markup
    assert f'href="{payload["url"]}"' in body
    assert html.escape(RUNBOOK_LINE) in body


def test_unconfigured_channels_are_skipped_and_the_alert_falls_back_to_the_pager(
    webhook: Webhook, warehouse: psycopg.Connection
) -> None:
    """`make run` has no Slack and no SMTP: a tier:2 alert still reaches someone, with a warning."""
    dag_id = f"bk_fallback_{uuid.uuid4().hex[:8]}"

    with structlog.testing.capture_logs() as logs:
        outcome = _send(_failure(dag_id, RuntimeError("boom")), _tiered("tier:2"))

    assert outcome == "sent"
    [page] = webhook.wait_for(1)
    assert page.body["dag_id"] == dag_id
    [skipped] = _events(logs, "alert_channel_skipped")
    assert (skipped["log_level"], skipped["channel"]) == ("warning", "slack")
    assert "no webhook token" in skipped["reason"]
    assert _events(logs, "alert_channel_fallback")


def test_no_configured_channel_at_all_is_logged_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS_WEBHOOK", json.dumps({"conn_type": "http"}))
    context = _deadline_context("run_1", datetime(2026, 3, 1, 5, tzinfo=UTC), dag_id="bk_nowhere")

    with structlog.testing.capture_logs() as logs:
        returned = asyncio.run(deadline_missed(context, **_tiered("tier:3").as_kwargs()))

    assert returned.startswith("failed: NoAlertChannel: no alert channel is configured")
    assert "email: " in returned
    assert "pager: " in returned
    assert _events(logs, "alert_callback_failed")


def test_one_channel_down_does_not_stop_the_others(
    webhook: Webhook, monkeypatch: pytest.MonkeyPatch, warehouse: psycopg.Connection
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv(
        "AIRFLOW_CONN_ALERTS_SLACK",
        json.dumps(
            {"conn_type": "slackwebhook", "host": f"http://127.0.0.1:{closed_port}", "password": SLACK_TOKEN}
        ),
    )
    dag_id = f"bk_partial_{uuid.uuid4().hex[:8]}"

    with structlog.testing.capture_logs() as logs:
        outcome = _send(_failure(dag_id, RuntimeError("boom")), _tiered("tier:1"))

    assert outcome == "sent"
    assert [r.body["dag_id"] for r in webhook.wait_for(1)] == [dag_id]
    [failed] = _events(logs, "alert_channel_failed")
    assert failed["channel"] == "slack"
    (channels,) = warehouse.execute(
        "SELECT channels FROM batch_meta.alert_log WHERE dag_id = %s", (dag_id,)
    ).fetchone()
    assert channels == ["pager"]


# --- dedup by error signature ------------------------------------------------------------------------


def _http_error(status: int, reason: str, page: int) -> Exception:
    return type("HTTPError", (Exception,), {})(
        f"{status} Client Error: {reason} for url: http://127.0.0.1:8081/v1/orders?page={page}"
        f"&request_id={uuid.uuid4()}"
    )


def test_a_different_error_still_alerts_within_the_window_and_a_repeat_does_not(
    slack: Webhook, warehouse: psycopg.Connection
) -> None:
    dag_id = f"bk_signature_{uuid.uuid4().hex[:8]}"
    route = _tiered("tier:2")

    first_401 = _send(_failure(dag_id, _http_error(401, "Unauthorized", 3), run_id="r1"), route)
    then_422 = _send(_failure(dag_id, _http_error(422, "Unprocessable Entity", 7), run_id="r2"), route)
    again_401 = _send(_failure(dag_id, _http_error(401, "Unauthorized", 12), run_id="r3"), route)

    assert (first_401, then_422, again_401) == ("sent", "sent", "suppressed")
    posts = slack.wait_for(3, timeout=2)
    # The status as the error states it: a bare "401" could also turn up in the random ids and UUIDs.
    assert [("401 Client Error" in p.body["text"] + _slack_text(p.body)) for p in posts] == [True, False]
    rows = warehouse.execute(
        "SELECT run_id, outcome, signature FROM batch_meta.alert_log WHERE dag_id = %s ORDER BY id", (dag_id,)
    ).fetchall()
    assert [(run_id, outcome) for run_id, outcome, _ in rows] == [
        ("r1", "sent"),
        ("r2", "sent"),
        ("r3", "suppressed"),
    ]
    assert rows[0][2] == rows[2][2] != rows[1][2]
    assert rows[0][2].startswith("HTTPError: 401 client error: unauthorized")


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("RuntimeError: page 3 of 40 failed", "RuntimeError: page 17 of 41 failed", True),
        ("KeyError: 'order 9f8e7d6c5b4a'", "KeyError: 'order 0a1b2c3d4e5f'", True),
        ("ValueError: at 2026-03-01T03:00:00Z", "ValueError: at 2026-03-02 04:10:11+00:00", True),
        ("HTTPError: 401 Client Error", "HTTPError: 422 Client Error", False),
        ("RuntimeError: boom", "ValueError: boom", False),
    ],
)
def test_error_signature_ignores_ids_numbers_and_times_but_not_the_class_or_http_status(
    a: str, b: str, same: bool
) -> None:
    assert (error_signature({"error": a}) == error_signature({"error": b})) is same
    assert error_signature({"kind": "deadline_missed"}) == ""


# --- reports: their own delivery target ----------------------------------------------------------------


def test_a_report_goes_to_its_own_webhook_and_never_to_the_alerts_one(
    webhook: Webhook, slack: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _json_receiver() as reports, _json_receiver(answer=b"ok") as reports_slack:
        monkeypatch.setenv(
            "AIRFLOW_CONN_REPORTS_WEBHOOK",
            json.dumps({"conn_type": "http", "host": f"{reports.url}/reports"}),
        )
        monkeypatch.setenv(
            "AIRFLOW_CONN_REPORTS_SLACK",
            json.dumps({"conn_type": "slackwebhook", "host": reports_slack.url, "password": SLACK_TOKEN}),
        )

        record = send_report(
            {"kind": "sales_daily_report", "day": "2026-03-01"},
            summary="Sales 2026-03-01: 120 orders",
            link="http://reports.example.test/sales_daily_2026-03-01.html",
        )

        [delivered] = reports.wait_for(1)
        [posted] = reports_slack.wait_for(1)
    assert (delivered.path, delivered.body["day"]) == ("/reports", "2026-03-01")
    assert posted.body["text"] == "Sales 2026-03-01: 120 orders"
    assert record["slack"] is True
    assert webhook.requests == []
    assert slack.requests == []

    monkeypatch.setenv("AIRFLOW_CONN_REPORTS_WEBHOOK", webhook.url)
    with pytest.raises(ValueError, match="points at the alerts webhook"):
        send_report({"kind": "sales_daily_report"}, summary="x")
    assert webhook.requests == []
