"""Alerts: a task's final failure (deduplicated) and a missed DAG-run deadline, as one payload shape.

They go out on the channels of the DAG's route (batchkit.alert_channels): the pager webhook (JSON,
HttpNotifier), Slack (Block Kit, SlackWebhookNotifier) and email (SmtpNotifier), picked by the DAG's
tier tag from alert_channels.TIER_CHANNELS. A channel whose connection is not configured is skipped
with a warning; with none configured the alert falls back to the pager webhook. Task failures run
`on_failure_callback` in the task's own process; deadline callbacks run in the triggerer (async, so
this module lives in plugins/, importable there).

Every alert takes one path, send_logged, in this order:

1. Gate, then send. When the warehouse answers (connect timeout WAREHOUSE_CONNECT_TIMEOUT_SECONDS),
   gate_and_send decides under an advisory lock per (kind, dag_id, task_id): silenced, a duplicate
   within the dedup window (same kind, DAG, task and error signature: see error_signature), or sent
   (send_unless_recent is its yes/no form). The send happens inside that transaction and the decision's row in
   batch_meta.alert_log commits with it, so concurrent failures produce exactly one alert.
2. Or fall back to sending without dedup. When the warehouse cannot be reached (or fails before the
   send), the alert is sent anyway: nobody is told about an outage by an alert that waits for the
   database. The task/triggerer log gets a warning `alert_sent_without_dedup` with the reason.
3. Then record. After a fallback send, one best-effort attempt writes the `sent` row to alert_log, so
   later alerts deduplicate against it once the warehouse is back; a failure to record is logged
   (`alert_log_write_failed`), never raised.

Email of a digest tier (alert_channels.DIGEST_TIERS: tier:3) is not sent in step 1: the gate's "send"
queues the alert in batch_meta.alert_digest (queue_for_digest), in the same transaction as its alert_log
row (channels `digest`, outcome `sent`; send_logged returns "queued"), and a duplicate within the window
adds to the queued entry's `repeats`. The DAG platform_alert_digest then sends one email per recipient
list with every queued alert (send_alert_digests), exactly once through the side-effect ledger. The
fallback of step 2 is unchanged: with the warehouse down there is no queue, and the email goes out at
once like any other channel.

A callback never takes its host down: FailureAlert.notify and deadline_missed catch every error, log
it with its traceback as `alert_callback_failed` (naming dag_id and run_id), and return normally.
deadline_missed returns a short string, never a dict: Airflow stores an async callback's return value
in a text column, and a dict there crashes the triggerer.

What leaves the platform is scrubbed: the payload passes through Airflow's secrets masker (connection
passwords and extras are registered with it when a task or the triggerer reads them), and an error's
text is cut to ERROR_EXCERPT_CHARS. A webhook whose URL path is the secret (Slack-style incoming
webhooks) keeps that path in the connection's password, not its host, so it is masked like any password.

Importing this module must stay cheap and I/O-free: every DAG file imports it through dag_factory at
parse time, so provider hooks and notifiers are imported where they are used.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import psycopg
from airflow.sdk import BaseNotifier, TaskInstanceState, conf
from psycopg.types.json import Jsonb

from batchkit.alert_channels import (
    DEFAULT_SLACK_CONN_ID,
    DEFAULT_SMTP_CONN_ID,
    DEFAULT_WEBHOOK_CONN_ID,
    DIGEST,
    DIGEST_TIERS,
    EMAIL,
    PAGER,
    SLACK,
    ChannelTarget,
    DigestItem,
    channels_for_tier,
    deliver_to,
    digest_email_message,
    email_recipients,
    read_connection,
    send_email,
    unconfigured_reason,
)
from batchkit.ledger import LedgerStatus, perform_once
from batchkit.migrations import require_current
from batchkit.observability import get_logger
from batchkit.policy import RUNBOOK_HEADING

if TYPE_CHECKING:
    from airflow.sdk.definitions.context import Context

# The side-effect ledger key of one digest email: alert_digest:<batch>.
DIGEST_LEDGER_PREFIX = "alert_digest:"
DEFAULT_WAREHOUSE_CONN_ID = "warehouse"
DEDUP_MINUTES_VARIABLE = "batch_alert_dedup_minutes"
DEFAULT_DEDUP_WINDOW = timedelta(minutes=60)
# How long an alert waits for the warehouse before it goes out without dedup. A connection's own
# `connect_timeout` extra wins.
WAREHOUSE_CONNECT_TIMEOUT_SECONDS = 5
# deadline_missed's return value lands in a text column (callback.output): keep it a short string.
MAX_CALLBACK_OUTPUT_CHARS = 200
# An error's text in an alert: enough to recognise it; the full text stays in the task log.
ERROR_EXCERPT_CHARS = 500
SIGNATURE_CHARS = 200
RUNBOOK_LINE_CHARS = 300

# What happened to one alert; the first three are also batch_meta.alert_log.outcome values ("queued":
# queued for the tier-3 digest, logged as `sent` on channel `digest`).
AlertOutcome = Literal["sent", "suppressed", "silenced", "sent_without_dedup", "queued"]

log = get_logger(__name__)


class NoAlertChannel(RuntimeError):
    """No channel of the route (nor the pager webhook fallback) has a configured connection."""


@dataclass(frozen=True)
class AlertRoute:
    """Where alerts go. Plain strings only: it travels as AsyncCallback kwargs into the triggerer.

    `channels` None means "not routed yet": standard_dag fills it from the DAG's tier (routed()); a
    route that is never routed sends to alert_channels.UNTIERED_CHANNELS (the pager webhook). A
    non-empty `email_to` adds email to any route. `runbook` is the line the Slack/email message shows.
    """

    http_conn_id: str = DEFAULT_WEBHOOK_CONN_ID
    endpoint: str | None = None
    email_to: tuple[str, ...] = field(default=())
    smtp_conn_id: str | None = None
    slack_conn_id: str = DEFAULT_SLACK_CONN_ID
    channels: tuple[str, ...] | None = None
    tier: str | None = None
    runbook: str | None = None

    def routed(self, *, tier: str | None, runbook: str | None = None) -> AlertRoute:
        """This route for a DAG of `tier`: channels from the tier (unless set), the tier, the runbook line."""
        return replace(
            self,
            channels=tuple(self.channels) if self.channels is not None else channels_for_tier(tier),
            tier=self.tier or tier,
            runbook=self.runbook or runbook,
        )

    def channel_list(self) -> tuple[str, ...]:
        channels = tuple(self.channels) if self.channels is not None else channels_for_tier(self.tier)
        if self.email_to and EMAIL not in channels:
            channels += (EMAIL,)
        return channels

    def digests_email(self) -> bool:
        """Whether this route's email waits for the hourly digest (its tier is in DIGEST_TIERS)."""
        return self.tier in DIGEST_TIERS

    def conn_id(self, channel: str) -> str:
        return {
            PAGER: self.http_conn_id,
            SLACK: self.slack_conn_id,
            EMAIL: self.smtp_conn_id or DEFAULT_SMTP_CONN_ID,
        }[channel]

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "http_conn_id": self.http_conn_id,
            "endpoint": self.endpoint,
            "email_to": list(self.email_to),
            "smtp_conn_id": self.smtp_conn_id,
            "slack_conn_id": self.slack_conn_id,
            "channels": None if self.channels is None else list(self.channels),
            "tier": self.tier,
            "runbook": self.runbook,
        }


def runbook_line(doc_md: str | None) -> str | None:
    """The first line of the doc's `## Runbook` section (list markers stripped, cut), else None."""
    if not doc_md:
        return None
    match = RUNBOOK_HEADING.search(doc_md)
    if not match:
        return None
    for line in doc_md[match.end() :].splitlines():
        line = line.strip()
        if line.startswith("#"):
            return None
        if line:
            line = re.sub(r"^(?:[-*+]|\d+[.)])\s+", "", line)
            return line if len(line) <= RUNBOOK_LINE_CHARS else line[: RUNBOOK_LINE_CHARS - 1] + "…"
    return None


def with_route_details(payload: Mapping[str, Any], route: AlertRoute) -> dict[str, Any]:
    """The payload plus the route's tier and runbook line (when known), for every channel's message."""
    extra = {"tier": route.tier, "runbook": route.runbook}
    return {**payload, **{name: value for name, value in extra.items() if value}}


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
        error=error_excerpt(error),
        try_number=ti.try_number,
        max_tries=ti.max_tries,
    )


def error_excerpt(error: object) -> str | None:
    """`Class: message`, cut to ERROR_EXCERPT_CHARS (None without an error)."""
    if error is None:
        return None
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    return text if len(text) <= ERROR_EXCERPT_CHARS else text[: ERROR_EXCERPT_CHARS - 1] + "…"


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


def resolve_targets(route: AlertRoute) -> list[ChannelTarget]:
    """The route's channels that can send, each with its connection (secrets now registered with the
    masker). Unconfigured ones are skipped with `alert_channel_skipped`; when none is left, the pager
    webhook is the fallback (`alert_channel_fallback`); NoAlertChannel when that is unconfigured too."""
    targets: list[ChannelTarget] = []
    reasons: dict[str, str] = {}
    channels = route.channel_list()
    for channel in channels:
        target, reason = _target(route, channel)
        if target is not None:
            targets.append(target)
        else:
            reasons[channel] = reason
            log.warning(
                "alert_channel_skipped", channel=channel, conn_id=route.conn_id(channel), reason=reason
            )
    if not targets and PAGER not in channels:
        target, reason = _target(route, PAGER)
        if target is not None:
            log.warning(
                "alert_channel_fallback", channel=PAGER, skipped=sorted(reasons), conn_id=target.conn_id
            )
            targets.append(target)
        else:
            reasons[PAGER] = reason
    if not targets:
        raise NoAlertChannel(
            "no alert channel is configured: " + "; ".join(f"{c}: {r}" for c, r in reasons.items())
        )
    return targets


def _target(route: AlertRoute, channel: str) -> tuple[ChannelTarget | None, str]:
    conn_id = route.conn_id(channel)
    recipients = email_recipients(route.email_to) if channel == EMAIL else ()
    reason = unconfigured_reason(channel, conn_id, recipients)
    if reason is not None:
        return None, reason
    endpoint = _webhook_endpoint(route) if channel == PAGER else None
    return ChannelTarget(channel, conn_id, endpoint=endpoint, recipients=recipients), ""


def _webhook_endpoint(route: AlertRoute) -> str | None:
    """The route's endpoint, else the webhook connection's password when it has no login: a secret path
    such as `/services/T0/B0/XXXX`, kept where Airflow masks it, not in the host."""
    connection = read_connection(route.http_conn_id)
    if route.endpoint is not None or connection is None or connection.login or not connection.password:
        return route.endpoint
    return connection.password


def scrubbed(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload with every secret Airflow's masker knows replaced by ***."""
    from airflow.sdk._shared.secrets_masker import redact

    return redact(dict(payload))


def deliver(payload: Mapping[str, Any], route: AlertRoute) -> list[str]:
    """Send the payload on every configured channel of the route (no gate); the channels delivered."""
    targets = resolve_targets(route)
    return deliver_to(targets, scrubbed(payload))


_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ t]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:z|[+-]\d{2}:?\d{2})?)?")
_HEX_ID = re.compile(r"\b(?=[0-9a-f]*\d)[0-9a-f]{8,}\b")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_HTTP_ERROR_STATUS = re.compile(r"[45]\d\d")


def error_signature(payload: Mapping[str, Any]) -> str:
    """What makes two failures "the same" for dedup: the error class and its message with ids, UUIDs,
    timestamps and numbers replaced (HTTP error statuses 4xx/5xx are kept, so a 422 is not a 401).
    Empty for alerts without an error (deadline_missed dedups per DAG)."""
    error = payload.get("error")
    if not error:
        return ""
    error_class, sep, message = str(error).partition(": ")
    if not sep or " " in error_class:
        error_class, message = "", str(error)
    text = message.lower()
    text = _UUID.sub("<uuid>", text)
    text = _TIMESTAMP.sub("<time>", text)
    text = _HEX_ID.sub("<id>", text)
    text = _NUMBER.sub(lambda m: m[0] if _HTTP_ERROR_STATUS.fullmatch(m[0]) else "<n>", text)
    text = " ".join(text.split())
    return f"{error_class}: {text}"[:SIGNATURE_CHARS] if error_class else text[:SIGNATURE_CHARS]


def ensure_alert_log(conn: psycopg.Connection) -> None:
    """Check alert_log, alert_silences and alert_digest are at the version this code needs
    (batchkit.migrations.require_current). A warehouse behind raises SchemaVersionError, which the
    senders treat like a warehouse that is down: the alert goes out without dedup and says why."""
    require_current(conn)


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
    """Call `send` unless the alert is silenced or one of the same (kind, dag_id, task_id, error
    signature) was sent within `window`. Returns whether it sent; see gate_and_send."""
    return gate_and_send(conn, payload, window=window, send=send) == "sent"


def gate_and_send(
    conn: psycopg.Connection,
    payload: Mapping[str, Any],
    *,
    window: timedelta,
    send: Callable[[], Any],
    on_duplicate: Callable[[], None] | None = None,
) -> AlertOutcome:
    """The dedup/silence gate: call `send` unless silenced or a duplicate; returns the outcome.

    A duplicate is a `sent` row of the same kind, DAG, task and error_signature within `window`: a
    different kind of failure of the same task (a 422 after a 401) still alerts. The decision and its
    log row commit together under an advisory lock per (kind, dag_id, task_id), so concurrent failures
    (mapped tasks, parallel runs) produce one alert. If `send` raises, nothing is logged and the next
    failure alerts again. When `send` returns a list (the channels delivered), the row records it.
    `on_duplicate` runs for a duplicate, in the same transaction (the digest counts repeats with it).
    """
    ensure_alert_log(conn)
    key = _dedup_key(payload)
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
             WHERE outcome = 'sent' AND kind = %s AND dag_id = %s AND task_id = %s AND signature = %s
               AND created_at > clock_timestamp() - %s
             LIMIT 1
            """,
            (*key, error_signature(payload), window),
        ).fetchone()
        outcome: AlertOutcome = "silenced" if silenced else "suppressed" if recent else "sent"
        channels = None
        if outcome == "sent":
            delivered = send()
            channels = delivered if isinstance(delivered, list) else None
        elif outcome == "suppressed" and on_duplicate is not None:
            on_duplicate()
        _insert_alert_log_row(conn, payload, outcome, channels)
    return outcome


def _dedup_key(payload: Mapping[str, Any]) -> tuple[str, str, str]:
    return (payload["kind"], payload["dag_id"], payload.get("task_id") or "")


def _insert_alert_log_row(
    conn: psycopg.Connection, payload: Mapping[str, Any], outcome: str, channels: list[str] | None = None
) -> None:
    conn.execute(
        """
        INSERT INTO batch_meta.alert_log
            (kind, dag_id, task_id, run_id, outcome, payload, signature, channels, created_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, clock_timestamp())
        """,
        (
            *_dedup_key(payload),
            payload.get("run_id"),
            outcome,
            Jsonb(dict(payload)),
            error_signature(payload),
            channels,
        ),
    )


class FailureAlert(BaseNotifier):
    """on_failure_callback: one alert per (dag_id, task_id, error signature) per `dedup_window`, on the
    final failure, to the route's channels.

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
        """Never raises: a failing alert is logged as `alert_callback_failed`, not a second task error."""
        ti = context["ti"]
        try:
            if ti.state == TaskInstanceState.UP_FOR_RETRY:
                log.info(
                    "alert_skipped_will_retry",
                    dag_id=ti.dag_id,
                    task_id=ti.task_id,
                    try_number=ti.try_number,
                )
                return
            payload = with_route_details(task_failure_payload(context), self.route)
            outcome = send_logged(
                payload, self.route, self.warehouse_conn_id, dedup_window(self.dedup_window)
            )
            log.info("failure_alert", outcome=outcome, dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id)
        except Exception as error:
            log.exception(
                "alert_callback_failed",
                kind="task_failed",
                dag_id=ti.dag_id,
                task_id=ti.task_id,
                run_id=ti.run_id,
                error=_describe(error),
            )


def dedup_window(default: timedelta) -> timedelta:
    """Variable `batch_alert_dedup_minutes` (read when an alert fires, never at parse time), else `default`."""
    from airflow.sdk import Variable

    minutes = Variable.get(DEDUP_MINUTES_VARIABLE, default=None)
    return default if minutes is None else timedelta(minutes=float(minutes))


def connect_warehouse(warehouse_conn_id: str) -> psycopg.Connection:
    """A psycopg connection to the warehouse that gives up after WAREHOUSE_CONNECT_TIMEOUT_SECONDS."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id=warehouse_conn_id)
    # PostgresHook passes a connection's extras to libpq; libpq's own default is to wait forever.
    extra = hook.connection.extra_dejson
    if "connect_timeout" not in extra:
        hook.connection.extra = json.dumps({**extra, "connect_timeout": WAREHOUSE_CONNECT_TIMEOUT_SECONDS})
    return hook.get_conn()


@dataclass
class _TrackedDelivery:
    """Delivery to the targets as a gate's `send`, remembering how far it got: a warehouse error before
    the send means "send without dedup", after a successful send it only means the log row is missing."""

    payload: Mapping[str, Any]
    targets: Sequence[ChannelTarget]
    state: Literal["not_attempted", "failed", "delivered"] = "not_attempted"
    channels: list[str] = field(default_factory=list)

    def __call__(self) -> list[str]:
        self.state = "failed"
        self.channels = deliver_to(self.targets, self.payload)
        self.state = "delivered"
        return self.channels


def send_logged(
    payload: Mapping[str, Any], route: AlertRoute, warehouse_conn_id: str, window: timedelta
) -> AlertOutcome:
    """Deliver unless silenced or a duplicate within `window`, logging the decision in alert_log; if the
    warehouse cannot be reached, deliver without dedup, then record it when possible (module docstring).

    A route of a digest tier queues its email for the digest instead (returns "queued" when that was
    its only channel); with the warehouse down the email is sent at once like the other channels.

    A delivery error on every channel is raised (sending again would fail the same way); one channel
    failing while another delivered is logged (`alert_channel_failed`) and the alert counts as sent.
    NoAlertChannel when no channel is configured.
    """
    # Reading the channels' connections registers their secrets with the masker: before scrubbing.
    targets = resolve_targets(route)
    payload = scrubbed(payload)
    digest_target = next((t for t in targets if t.channel == EMAIL), None) if route.digests_email() else None
    if digest_target is not None:
        return _queue_logged(payload, targets, digest_target, warehouse_conn_id, window)
    delivery = _TrackedDelivery(payload, targets)
    try:
        with connect_warehouse(warehouse_conn_id) as conn:
            return gate_and_send(conn, payload, window=window, send=delivery)
    except Exception as error:
        if delivery.state == "failed":
            raise
        if delivery.state == "delivered":
            # The transaction holding the `sent` row rolled back: the next alert is not deduplicated.
            log.warning("alert_log_write_failed", **_alert_fields(payload), error=_describe(error))
            return "sent"
        reason = _describe(error)
    return _send_without_dedup(payload, targets, warehouse_conn_id, reason=reason)


@dataclass
class _DigestDelivery:
    """A digest route's gate `send`: queue the email for the digest, deliver the other channels now.

    The queued row commits with the alert_log row or not at all; `delivered` remembers which immediate
    channels got the alert, so a fallback after a failed commit sends only what is still missing."""

    conn: psycopg.Connection
    payload: Mapping[str, Any]
    digest_target: ChannelTarget
    immediate: Sequence[ChannelTarget]
    delivered: list[str] = field(default_factory=list)

    def __call__(self) -> list[str]:
        queue_for_digest(self.conn, self.payload, self.digest_target)
        if self.immediate:
            try:
                self.delivered = deliver_to(self.immediate, self.payload)
            except Exception:
                # Each failure is logged (`alert_channel_failed`); the digest still carries the alert.
                self.delivered = []
        return [*self.delivered, DIGEST]


def _queue_logged(
    payload: Mapping[str, Any],
    targets: Sequence[ChannelTarget],
    digest_target: ChannelTarget,
    warehouse_conn_id: str,
    window: timedelta,
) -> AlertOutcome:
    """send_logged for a route whose email waits for the digest; a duplicate counts as a repeat."""
    immediate = [target for target in targets if target is not digest_target]
    delivery: _DigestDelivery | None = None
    try:
        with connect_warehouse(warehouse_conn_id) as conn:
            delivery = _DigestDelivery(conn, payload, digest_target, immediate)
            outcome = gate_and_send(
                conn,
                payload,
                window=window,
                send=delivery,
                on_duplicate=lambda: count_digest_repeat(conn, payload),
            )
    except Exception as error:
        reason = _describe(error)
    else:
        if outcome == "sent" and not immediate:
            log.info("alert_queued_for_digest", **_alert_fields(payload), recipients=digest_target.recipients)
            return "queued"
        return outcome
    # Nothing was queued (or the queued row rolled back with its transaction): send what is missing, now.
    done = set(delivery.delivered) if delivery is not None else set()
    missing = [target for target in targets if target.channel not in done]
    return _send_without_dedup(payload, missing, warehouse_conn_id, reason=reason)


def _send_without_dedup(
    payload: Mapping[str, Any], targets: Sequence[ChannelTarget], warehouse_conn_id: str, *, reason: str
) -> AlertOutcome:
    """The warehouse-down fallback: deliver now, warn `alert_sent_without_dedup`, record best effort."""
    started = time.monotonic()
    try:
        channels = deliver_to(targets, payload)
    except Exception as error:
        error.add_note(f"sent without dedup because the warehouse was unavailable: {reason}")
        raise
    log.warning(
        "alert_sent_without_dedup",
        **_alert_fields(payload),
        reason=f"warehouse {warehouse_conn_id!r} unavailable: {reason}",
        delivery_seconds=round(time.monotonic() - started, 3),
        channels=channels,
    )
    _record_sent_best_effort(payload, warehouse_conn_id, channels)
    return "sent_without_dedup"


def _record_sent_best_effort(
    payload: Mapping[str, Any], warehouse_conn_id: str, channels: list[str] | None = None
) -> None:
    """Write the `sent` row of an alert that bypassed the gate, so the next ones dedup against it."""
    try:
        with connect_warehouse(warehouse_conn_id) as conn:
            ensure_alert_log(conn)
            _insert_alert_log_row(conn, payload, "sent", channels)
    except Exception as error:
        log.warning("alert_log_write_failed", **_alert_fields(payload), error=_describe(error))


async def deadline_missed(
    context: Mapping[str, Any] | None = None,
    *,
    http_conn_id: str = DEFAULT_WEBHOOK_CONN_ID,
    endpoint: str | None = None,
    email_to: Sequence[str] = (),
    smtp_conn_id: str | None = None,
    slack_conn_id: str = DEFAULT_SLACK_CONN_ID,
    channels: Sequence[str] | None = None,
    tier: str | None = None,
    runbook: str | None = None,
    deadline_interval_seconds: float | None = None,
    warehouse_conn_id: str = DEFAULT_WAREHOUSE_CONN_ID,
) -> str:
    """AsyncCallback for a DeadlineAlert; the triggerer calls it with the callback's kwargs + `context`.

    Airflow keeps a run's deadline until the run succeeds, so it also fires for a run that already
    FAILED: that run's task_failed alert has said everything, and this one is skipped. Otherwise it goes
    through send_logged like a task failure: silences, a per-DAG dedup window, the alert log, and the
    warehouse-down fallback (in a worker thread: the triggerer's event loop must not block on Postgres
    or HTTP).

    Returns a short outcome ("sent", "suppressed", ..., "skipped: ...", "failed: ..."), which Airflow
    stores as the callback's output in a text column: a dict there crashes the triggerer. Never raises.
    """
    try:
        if context is None:
            raise ValueError("deadline_missed needs the context Airflow passes to deadline callbacks")
        payload = deadline_payload(context, deadline_interval_seconds=deadline_interval_seconds)
        if payload.get("state") == "failed":
            log.info("deadline_alert_skipped_run_failed", dag_id=payload["dag_id"], run_id=payload["run_id"])
            return "skipped: the run already failed and alerted"
        route = AlertRoute(
            http_conn_id=http_conn_id,
            endpoint=endpoint,
            email_to=tuple(email_to),
            smtp_conn_id=smtp_conn_id,
            slack_conn_id=slack_conn_id,
            channels=None if channels is None else tuple(channels),
            tier=tier,
            runbook=runbook,
        )
        payload = with_route_details(payload, route)
        outcome = await asyncio.to_thread(
            send_logged, payload, route, warehouse_conn_id, DEFAULT_DEDUP_WINDOW
        )
        log.info("deadline_alert", outcome=outcome, dag_id=payload["dag_id"], run_id=payload["run_id"])
        return outcome
    except Exception as error:
        dag_run = _run_in(context)
        log.exception(
            "alert_callback_failed",
            kind="deadline_missed",
            dag_id=dag_run.get("dag_id"),
            run_id=dag_run.get("dag_run_id"),
            error=_describe(error),
        )
        return f"failed: {_describe(error)}"[:MAX_CALLBACK_OUTPUT_CHARS]


# -- the tier-3 digest ---------------------------------------------------------------------------------


def queue_for_digest(conn: psycopg.Connection, payload: Mapping[str, Any], target: ChannelTarget) -> None:
    """Queue the (scrubbed) alert for the digest email to `target`'s recipients (in the caller's
    transaction: gate_and_send commits it with the alert_log row)."""
    if not target.recipients:
        raise ValueError("a digest entry needs recipients")
    conn.execute(
        """
        INSERT INTO batch_meta.alert_digest
            (kind, dag_id, task_id, run_id, signature, payload, smtp_conn_id, recipients, created_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, clock_timestamp())
        """,
        (
            *_dedup_key(payload),
            payload.get("run_id"),
            error_signature(payload),
            Jsonb(dict(payload)),
            target.conn_id,
            list(target.recipients),
        ),
    )


def count_digest_repeat(conn: psycopg.Connection, payload: Mapping[str, Any]) -> None:
    """A duplicate within the dedup window: count it on the unsent digest entry of the same (kind, DAG,
    task, signature). Once that entry is sent the repeat is only in alert_log (`suppressed`)."""
    conn.execute(
        """
        UPDATE batch_meta.alert_digest
           SET repeats = repeats + 1, last_repeat_at = clock_timestamp()
         WHERE id = (
            SELECT id FROM batch_meta.alert_digest
             WHERE sent_at IS NULL AND kind = %s AND dag_id = %s AND task_id = %s AND signature = %s
             ORDER BY id DESC
             LIMIT 1
         )
        """,
        (*_dedup_key(payload), error_signature(payload)),
    )


@dataclass(frozen=True)
class DigestEmail:
    """One digest email: its entries (oldest first) for one recipient list on one SMTP connection.
    `batch` is None for a preview (dry run) of entries not claimed yet."""

    smtp_conn_id: str
    recipients: tuple[str, ...]
    entry_ids: tuple[int, ...]
    items: tuple[DigestItem, ...]
    batch: str | None = None

    def message(self) -> tuple[str, str, str]:
        """(subject, plain text, html)."""
        return digest_email_message(self.items)


@dataclass(frozen=True)
class DigestDelivery:
    """What send_alert_digests did with one digest email."""

    batch: str | None
    recipients: tuple[str, ...]
    entries: int
    status: LedgerStatus
    subject: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "recipients": list(self.recipients),
            "entries": self.entries,
            "status": self.status.value,
            "subject": self.subject,
        }


# Unsent entries, all of them or one batch's. Recipient lists are compared as sets: the same addresses
# in another order get the same email.
_UNSENT_ENTRIES_SQL = """
    SELECT id, payload, repeats, created_at, last_repeat_at, smtp_conn_id,
           ARRAY(SELECT DISTINCT unnest(recipients) ORDER BY 1) AS recipients, batch
      FROM batch_meta.alert_digest
     WHERE sent_at IS NULL AND (%(batch)s::text IS NULL OR batch = %(batch)s::text)
     ORDER BY id
"""


def _digest_emails(rows: Sequence[tuple[Any, ...]], *, by_batch: bool) -> list[DigestEmail]:
    groups: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
    for row in rows:
        entry_id, _, _, _, _, conn_id, recipients, batch = row
        key = (batch,) if by_batch else (conn_id, tuple(recipients))
        groups.setdefault(key, []).append(row)
    emails = []
    for members in groups.values():
        _, _, _, _, _, conn_id, recipients, batch = members[0]
        emails.append(
            DigestEmail(
                smtp_conn_id=conn_id,
                recipients=tuple(recipients),
                entry_ids=tuple(row[0] for row in members),
                items=tuple(
                    DigestItem(payload=row[1], repeats=row[2], queued_at=row[3], last_repeat_at=row[4])
                    for row in members
                ),
                batch=batch if by_batch else None,
            )
        )
    return emails


def unsent_digests(conn: psycopg.Connection) -> list[DigestEmail]:
    """Every unsent entry (pending or claimed), one email per SMTP connection and recipient list: what
    the next digest would send (a dry run's preview; it writes nothing)."""
    ensure_alert_log(conn)
    with conn.transaction():
        rows = conn.execute(_UNSENT_ENTRIES_SQL, {"batch": None}).fetchall()
    return _digest_emails(rows, by_batch=False)


def claim_digest_entries(conn: psycopg.Connection, *, claimed_by: str) -> list[str]:
    """Claim every pending entry into a new batch per SMTP connection and recipient list; returns the
    new batches. A batch's membership never changes afterwards, so its ledger key always means the same
    email. Entries queued later wait for the next claim."""
    ensure_alert_log(conn)
    with conn.transaction():
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("batchkit:alert_digest:claim",)
        )
        groups = conn.execute(
            """
            SELECT DISTINCT smtp_conn_id, ARRAY(SELECT DISTINCT unnest(recipients) ORDER BY 1)
              FROM batch_meta.alert_digest
             WHERE batch IS NULL
            """
        ).fetchall()
        batches = []
        for conn_id, recipients in groups:
            batch = uuid.uuid4().hex
            conn.execute(
                """
                UPDATE batch_meta.alert_digest
                   SET batch = %s, claimed_by = %s, claimed_at = clock_timestamp()
                 WHERE batch IS NULL AND smtp_conn_id = %s
                   AND ARRAY(SELECT DISTINCT unnest(recipients) ORDER BY 1) = %s
                """,
                (batch, claimed_by, conn_id, recipients),
            )
            batches.append(batch)
    return batches


def _open_batches(conn: psycopg.Connection) -> list[str]:
    with conn.transaction():
        rows = conn.execute(
            """
            SELECT batch FROM batch_meta.alert_digest
             WHERE sent_at IS NULL AND batch IS NOT NULL
             GROUP BY batch
             ORDER BY min(id)
            """
        ).fetchall()
    return [batch for (batch,) in rows]


DigestSender = Callable[..., None]


def _send_batch(conn: psycopg.Connection, batch: str, send: DigestSender) -> dict[str, Any]:
    """The ledger action of one batch: render its unsent entries, send, mark them sent (that UPDATE
    commits with the ledger's `done` mark, in perform_once's transaction)."""
    rows = conn.execute(_UNSENT_ENTRIES_SQL, {"batch": batch}).fetchall()
    if not rows:
        return {"entries": [], "subject": None}
    [email] = _digest_emails(rows, by_batch=True)
    subject, text, body = email.message()
    send(email.smtp_conn_id, email.recipients, subject=subject, text=text, html_body=body)
    conn.execute(
        "UPDATE batch_meta.alert_digest SET sent_at = clock_timestamp() WHERE id = ANY(%s)",
        (list(email.entry_ids),),
    )
    return {
        "entries": list(email.entry_ids),
        "recipients": list(email.recipients),
        "smtp_conn_id": email.smtp_conn_id,
        "subject": subject,
    }


def send_alert_digests(
    conn: psycopg.Connection,
    *,
    claimed_by: str,
    dry_run: bool = False,
    send: DigestSender | None = None,
) -> list[DigestDelivery]:
    """Send every queued tier-3 alert: one email per SMTP connection and recipient list, exactly once.

    1. Claim the pending entries into batches (claim_digest_entries; `claimed_by` names the run).
    2. Send every open batch (this run's and any an earlier, failed run left) through the side-effect
       ledger, key `alert_digest:<batch>` (batchkit.ledger.perform_once): the email is sent and the
       entries marked sent in one transaction with the key's `done` mark. A send that raises rolls all of
       it back (the entries stay claimed, the key re-tryable): a retry, a cleared rerun or the next
       hourly run sends that batch, and a batch already done is never sent again.

    A failing batch does not stop the others; afterwards its first error is raised (the task fails and
    retries). `dry_run`: render and log every email the run would send (`alert_digest_preview`), write
    nothing. `conn` must be autocommit or idle (perform_once). `send` is alert_channels.send_email
    unless given.
    """
    if dry_run:
        previews = []
        for email in unsent_digests(conn):
            subject, text, _ = email.message()
            log.info(
                "alert_digest_preview",
                recipients=list(email.recipients),
                smtp_conn_id=email.smtp_conn_id,
                entries=len(email.items),
                subject=subject,
                text=text,
            )
            previews.append(
                DigestDelivery(None, email.recipients, len(email.items), LedgerStatus.DRY_RUN, subject)
            )
        return previews

    sender = send or send_email
    claim_digest_entries(conn, claimed_by=claimed_by)
    deliveries: list[DigestDelivery] = []
    errors: list[Exception] = []
    for batch in _open_batches(conn):
        try:
            outcome = perform_once(
                conn, DIGEST_LEDGER_PREFIX + batch, lambda batch=batch: _send_batch(conn, batch, sender)
            )
        except Exception as error:
            log.warning("alert_digest_send_failed", batch=batch, error=_describe(error))
            errors.append(error)
            continue
        result = outcome.result or {}
        delivery = DigestDelivery(
            batch,
            tuple(result.get("recipients") or ()),
            len(result.get("entries") or ()),
            outcome.status,
            result.get("subject"),
        )
        log.info("alert_digest_sent" if outcome.performed else "alert_digest_skipped", **delivery.as_json())
        deliveries.append(delivery)
    if errors:
        first = errors[0]
        for error in errors[1:]:
            first.add_note(f"another digest batch failed too: {_describe(error)}")
        raise first
    return deliveries


def _alert_fields(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that name an alert in log lines."""
    return {
        "kind": payload.get("kind"),
        "dag_id": payload.get("dag_id"),
        "task_id": payload.get("task_id"),
        "run_id": payload.get("run_id"),
    }


def _run_in(context: Any) -> Mapping[str, Any]:
    """The deadline context's dag_run, or {} when the context is too broken to name the run."""
    dag_run = context.get("dag_run") if isinstance(context, Mapping) else None
    return dag_run if isinstance(dag_run, Mapping) else {}


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip()


def _jsonable(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value
