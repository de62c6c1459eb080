"""Alerts: a task's final failure (deduplicated) and a missed DAG-run deadline, as one payload shape.

Both go out through the provider notifiers: HttpNotifier (JSON POST to the `alerts_webhook` connection)
always, SmtpNotifier as well when the route names recipients. Task failures run `on_failure_callback`
in the task's own process; deadline callbacks run in the triggerer (async, so this module lives in
plugins/, importable there). Both pass through one gate, send_unless_recent: silences, a dedup window
per (kind, dag_id, task_id), and a row in batch_meta.alert_log for every decision.

Importing this module must stay cheap and I/O-free: every DAG file imports it through dag_factory at
parse time, so provider hooks and notifiers are imported where they are used.
"""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import psycopg
from airflow.sdk import BaseNotifier, TaskInstanceState, conf
from psycopg.types.json import Jsonb

from batchkit.observability import get_logger
from batchkit.sql_files import apply_sql_file

if TYPE_CHECKING:
    from airflow.sdk.definitions.context import Context

ALERT_LOG_DDL = "sql/batch_meta/alert_log.sql"
ALERT_SILENCES_DDL = "sql/batch_meta/alert_silences.sql"
DEFAULT_WEBHOOK_CONN_ID = "alerts_webhook"
DEFAULT_WAREHOUSE_CONN_ID = "warehouse"
DEDUP_MINUTES_VARIABLE = "batch_alert_dedup_minutes"
DEFAULT_DEDUP_WINDOW = timedelta(minutes=60)
HTTP_TIMEOUT_SECONDS = 10.0

log = get_logger(__name__)


@dataclass(frozen=True)
class AlertRoute:
    """Where alerts go. Plain strings only: it travels as AsyncCallback kwargs into the triggerer."""

    http_conn_id: str = DEFAULT_WEBHOOK_CONN_ID
    endpoint: str | None = None
    email_to: tuple[str, ...] = field(default=())
    smtp_conn_id: str | None = None

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "http_conn_id": self.http_conn_id,
            "endpoint": self.endpoint,
            "email_to": list(self.email_to),
            "smtp_conn_id": self.smtp_conn_id,
        }


def alert_payload(
    kind: str,
    *,
    dag_id: str,
    run_id: str | None,
    url: str | None,
    data_interval_start: Any,
    data_interval_end: Any,
    **details: Any,
) -> dict[str, Any]:
    """The one JSON document every alert carries; `details` are the kind-specific fields."""
    return {
        "kind": kind,
        "dag_id": dag_id,
        "run_id": run_id,
        "url": url,
        "data_interval": {"start": _jsonable(data_interval_start), "end": _jsonable(data_interval_end)},
        **{name: _jsonable(value) for name, value in details.items()},
    }


def task_failure_payload(context: Context) -> dict[str, Any]:
    ti = context["ti"]
    error = context.get("exception")
    return alert_payload(
        "task_failed",
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        url=ti.log_url,
        data_interval_start=context.get("data_interval_start"),
        data_interval_end=context.get("data_interval_end"),
        task_id=ti.task_id,
        map_index=ti.map_index,
        error=f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error,
        try_number=ti.try_number,
        max_tries=ti.max_tries,
    )


def deadline_payload(
    context: Mapping[str, Any], *, deadline_interval_seconds: float | None
) -> dict[str, Any]:
    """From the context the scheduler hands a deadline callback: the run as the REST API renders it."""
    dag_run = context["dag_run"]
    return alert_payload(
        "deadline_missed",
        dag_id=dag_run["dag_id"],
        run_id=dag_run["dag_run_id"],
        url=dag_run_url(dag_run["dag_id"], dag_run["dag_run_id"]),
        data_interval_start=dag_run.get("data_interval_start"),
        data_interval_end=dag_run.get("data_interval_end"),
        deadline_time=context["deadline"]["deadline_time"],
        deadline_interval_seconds=deadline_interval_seconds,
        queued_at=dag_run.get("queued_at"),
        state=dag_run.get("state"),
    )


def dag_run_url(dag_id: str, run_id: str) -> str:
    """The run's page in the UI, built like RuntimeTaskInstance.log_url (from `[api] base_url`)."""
    base_url = conf.get("api", "base_url", fallback="http://localhost:8080/")
    return f"{base_url.rstrip('/')}/dags/{quote(dag_id)}/runs/{quote(run_id)}"


def build_notifiers(payload: Mapping[str, Any], route: AlertRoute) -> list[BaseNotifier]:
    from airflow.providers.http.notifications.http import HttpNotifier
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    notifiers: list[BaseNotifier] = [
        HttpNotifier(
            http_conn_id=route.http_conn_id,
            endpoint=route.endpoint,
            json=dict(payload),
            headers={"Content-Type": "application/json"},
            extra_options={"timeout": HTTP_TIMEOUT_SECONDS},
        )
    ]
    if route.email_to:
        subject_target = ".".join(str(p) for p in (payload["dag_id"], payload.get("task_id")) if p)
        notifiers.append(
            SmtpNotifier(
                to=list(route.email_to),
                smtp_conn_id=route.smtp_conn_id,
                subject=f"[airflow] {payload['kind']}: {subject_target}",
                html_content=f"<pre>{html.escape(json.dumps(payload, indent=2))}</pre>",
            )
        )
    return notifiers


# notify() is called directly rather than through BaseNotifier.__call__: the content is
# final, and Jinja-rendering the payload would choke on exception messages that contain "{{".
def deliver(payload: Mapping[str, Any], route: AlertRoute) -> None:
    for notifier in build_notifiers(payload, route):
        notifier.notify({})


def ensure_alert_log(conn: psycopg.Connection) -> None:
    apply_sql_file(conn, ALERT_LOG_DDL)
    apply_sql_file(conn, ALERT_SILENCES_DDL)


def silence(
    conn: psycopg.Connection, *, dag_id: str, task_pattern: str = "%", duration: timedelta, reason: str
) -> datetime:
    """Silence alerts of `dag_id` (tasks matching the LIKE `task_pattern`) for `duration`; returns the expiry."""
    if duration <= timedelta(0):
        raise ValueError(f"a silence needs a positive duration, got {duration}")
    if not reason.strip():
        raise ValueError("a silence needs a reason (it shows in the alert log)")
    ensure_alert_log(conn)
    with conn.transaction():
        (until,) = conn.execute(
            """
            INSERT INTO batch_meta.alert_silences (dag_id, task_pattern, until, reason)
            VALUES (%s, %s, clock_timestamp() + %s, %s)
            RETURNING until
            """,
            (dag_id, task_pattern, duration, reason),
        ).fetchone()
    return until


def send_unless_recent(
    conn: psycopg.Connection,
    payload: Mapping[str, Any],
    *,
    window: timedelta,
    send: Callable[[], None],
) -> bool:
    """Call `send` unless the alert is silenced or one of the same (kind, dag_id, task_id) was sent
    within `window`.

    The decision and its log row commit together under an advisory lock per key, so concurrent
    failures (mapped tasks, parallel runs) produce one alert. If `send` raises, nothing is logged and
    the next failure alerts again. Returns whether it sent.
    """
    ensure_alert_log(conn)
    key = (payload["kind"], payload["dag_id"], payload.get("task_id") or "")
    with conn.transaction():
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("batchkit:alert:" + ":".join(key),)
        )
        silenced = conn.execute(
            """
            SELECT 1 FROM batch_meta.alert_silences
             WHERE dag_id = %s AND %s LIKE task_pattern AND until > clock_timestamp()
             LIMIT 1
            """,
            (payload["dag_id"], payload.get("task_id") or ""),
        ).fetchone()
        recent = conn.execute(
            """
            SELECT 1 FROM batch_meta.alert_log
             WHERE outcome = 'sent' AND kind = %s AND dag_id = %s AND task_id = %s
               AND created_at > clock_timestamp() - %s
             LIMIT 1
            """,
            (*key, window),
        ).fetchone()
        outcome = "silenced" if silenced else "suppressed" if recent else "sent"
        if outcome == "sent":
            send()
        conn.execute(
            """
            INSERT INTO batch_meta.alert_log (kind, dag_id, task_id, run_id, outcome, payload, created_at)
            VALUES (%s, %s, %s, %s, %s, %s, clock_timestamp())
            """,
            (*key, payload.get("run_id"), outcome, Jsonb(payload)),
        )
    return outcome == "sent"


class FailureAlert(BaseNotifier):
    """on_failure_callback: one alert per (dag_id, task_id) per `dedup_window`, on the final failure.

    Airflow runs on_failure_callback only when the try ends FAILED (an UP_FOR_RETRY try runs
    on_retry_callback instead). The state check still guards it: attached as an on_retry_callback by
    mistake, it would page on every transient error.
    """

    def __init__(
        self,
        *,
        route: AlertRoute | None = None,
        warehouse_conn_id: str = DEFAULT_WAREHOUSE_CONN_ID,
        dedup_window: timedelta = DEFAULT_DEDUP_WINDOW,
    ) -> None:
        super().__init__()
        self.route = route or AlertRoute()
        self.warehouse_conn_id = warehouse_conn_id
        self.dedup_window = dedup_window

    def notify(self, context: Context) -> None:
        ti = context["ti"]
        if ti.state == TaskInstanceState.UP_FOR_RETRY:
            log.info(
                "alert_skipped_will_retry", dag_id=ti.dag_id, task_id=ti.task_id, try_number=ti.try_number
            )
            return
        payload = task_failure_payload(context)
        sent = send_logged(payload, self.route, self.warehouse_conn_id, dedup_window(self.dedup_window))
        log.info("failure_alert", sent=sent, dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id)


def dedup_window(default: timedelta) -> timedelta:
    """Variable `batch_alert_dedup_minutes` (read when an alert fires, never at parse time), else `default`."""
    from airflow.sdk import Variable

    minutes = Variable.get(DEDUP_MINUTES_VARIABLE, default=None)
    return default if minutes is None else timedelta(minutes=float(minutes))


def send_logged(
    payload: Mapping[str, Any], route: AlertRoute, warehouse_conn_id: str, window: timedelta
) -> bool:
    """Deliver unless silenced or a duplicate within `window`; the decision goes to batch_meta.alert_log."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    with PostgresHook(postgres_conn_id=warehouse_conn_id).get_conn() as conn:
        return send_unless_recent(conn, payload, window=window, send=lambda: deliver(payload, route))


async def deadline_missed(
    context: Mapping[str, Any] | None = None,
    *,
    http_conn_id: str = DEFAULT_WEBHOOK_CONN_ID,
    endpoint: str | None = None,
    email_to: Sequence[str] = (),
    smtp_conn_id: str | None = None,
    deadline_interval_seconds: float | None = None,
    warehouse_conn_id: str = DEFAULT_WAREHOUSE_CONN_ID,
) -> dict[str, Any]:
    """AsyncCallback for a DeadlineAlert; the triggerer calls it with the callback's kwargs + `context`.

    Airflow keeps a run's deadline until the run succeeds, so it also fires for a run that already
    FAILED: that run's task_failed alert has said everything, and this one is skipped. Otherwise it goes
    through the same silences, per-DAG dedup window and alert log as task failures (in a worker thread:
    the triggerer's event loop must not block on Postgres or HTTP). Returns the payload, which Airflow
    keeps as the callback's result.
    """
    if context is None:
        raise ValueError("deadline_missed needs the context Airflow passes to deadline callbacks")
    payload = deadline_payload(context, deadline_interval_seconds=deadline_interval_seconds)
    if payload.get("state") == "failed":
        log.info("deadline_alert_skipped_run_failed", dag_id=payload["dag_id"], run_id=payload["run_id"])
        return {**payload, "outcome": "skipped: the run already failed and alerted"}
    route = AlertRoute(
        http_conn_id=http_conn_id, endpoint=endpoint, email_to=tuple(email_to), smtp_conn_id=smtp_conn_id
    )
    sent = await asyncio.to_thread(send_logged, payload, route, warehouse_conn_id, DEFAULT_DEDUP_WINDOW)
    log.info("deadline_alert", sent=sent, dag_id=payload["dag_id"], run_id=payload["run_id"])
    return payload


def _jsonable(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value
