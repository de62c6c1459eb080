"""Where alerts (and reports) go: the tier routing table, each channel's message, and its delivery.

Channels (each a provider notifier on an Airflow connection):

| channel | connection (default id) | conn type     | what it sends |
| ------- | ----------------------- | ------------- | ------------- |
| `pager` | `alerts_webhook`        | http          | the alert's JSON document (HttpNotifier) |
| `slack` | `alerts_slack`          | slackwebhook  | a Block Kit message (SlackWebhookNotifier) |
| `email` | `alerts_smtp`           | smtp          | an HTML email (SmtpNotifier) to the route's `email_to`, else Variable `batch_alert_email_to` |

Routing by tier is declared once, in TIER_CHANNELS: tier:1 pages (pager webhook + Slack), tier:2 goes to
Slack, tier:3 to email. A route's explicit `email_to` adds email to any tier. A channel whose connection
is missing or empty (no host; for Slack no webhook token; for email no recipients) is skipped with the
warning `alert_channel_skipped`; when every channel of a route is skipped the alert falls back to the
pager webhook (`alert_channel_fallback`), so an alert is never dropped because, say, `make run` has no
Slack.

Email of a tier in DIGEST_TIERS (tier:3) does not go out at once: batchkit.alerts queues it in
batch_meta.alert_digest and the DAG platform_alert_digest sends one digest email per recipient list every
hour (digest_email_message renders it, send_email sends it as plain text + HTML). When the warehouse is
down such an alert is emailed at once instead (batchkit.alerts, the warehouse-down fallback).

Reports are not alerts: they go to their own connections (`reports_webhook`, and `reports_slack` when
configured) through send_report, which refuses a target that is also an alert channel.

Importing this module is cheap and I/O-free (dag_factory imports it at parse time): providers are
imported where they are used.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from batchkit.observability import get_logger
from batchkit.taxonomy import Tag

PAGER = "pager"
SLACK = "slack"
EMAIL = "email"
CHANNELS = (PAGER, SLACK, EMAIL)

# The routing table: the one place a tier's alert channels are declared.
TIER_CHANNELS: Mapping[str, tuple[str, ...]] = {
    Tag.TIER_1.value: (PAGER, SLACK),
    Tag.TIER_2.value: (SLACK,),
    Tag.TIER_3.value: (EMAIL,),
}
# A route that names no tier (an AlertRoute built by hand, an old serialized deadline callback).
UNTIERED_CHANNELS: tuple[str, ...] = (PAGER,)
# Tiers whose email is queued for the hourly digest (DAG platform_alert_digest) instead of sent at once.
DIGEST_TIERS: frozenset[str] = frozenset({Tag.TIER_3.value})
# What batch_meta.alert_log.channels records for an alert queued for the digest.
DIGEST = "digest"

DEFAULT_WEBHOOK_CONN_ID = "alerts_webhook"
DEFAULT_SLACK_CONN_ID = "alerts_slack"
DEFAULT_SMTP_CONN_ID = "alerts_smtp"
EMAIL_TO_VARIABLE = "batch_alert_email_to"
REPORTS_WEBHOOK_CONN_ID = "reports_webhook"
REPORTS_SLACK_CONN_ID = "reports_slack"
HTTP_TIMEOUT_SECONDS = 10
# Slack rejects a section text over 3000 characters and a header over 150.
SLACK_TEXT_LIMIT = 2900
SLACK_HEADER_LIMIT = 150

log = get_logger(__name__)


def channels_for_tier(tier: str | None) -> tuple[str, ...]:
    """The tier's channels from TIER_CHANNELS (UNTIERED_CHANNELS without a tier)."""
    if tier is None:
        return UNTIERED_CHANNELS
    try:
        return TIER_CHANNELS[str(tier)]
    except KeyError:
        raise ValueError(f"no alert route for tier {tier!r}; routed tiers: {sorted(TIER_CHANNELS)}") from None


def tier_of(tags: Iterable[str]) -> str | None:
    """The `tier:` tag among `tags` (validated DAGs have exactly one), else None."""
    tiers = sorted({str(tag) for tag in tags if str(tag).startswith("tier:")})
    return tiers[0] if tiers else None


# -- connections ---------------------------------------------------------------------------------------


def read_connection(conn_id: str) -> Any | None:
    """The connection, with its secrets registered with the masker; None when it is not defined."""
    from airflow.exceptions import AirflowNotFoundException as CoreNotFound
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException
    from airflow.sdk.log import mask_secret

    try:
        connection = BaseHook.get_connection(conn_id)
    except (AirflowNotFoundException, CoreNotFound):
        return None
    for secret in (connection.password, connection.extra):
        # Connections read in a task are masked already; one read elsewhere (a test, a CLI) is not.
        if secret:
            mask_secret(secret)
    return connection


def email_recipients(email_to: Sequence[str]) -> tuple[str, ...]:
    """The route's recipients, else Variable `batch_alert_email_to` (comma-separated), else ()."""
    if email_to:
        return tuple(email_to)
    from airflow.sdk import Variable

    try:
        value = Variable.get(EMAIL_TO_VARIABLE, default=None)
    except Exception as error:
        log.warning("alert_email_recipients_unreadable", variable=EMAIL_TO_VARIABLE, error=repr(error))
        return ()
    return tuple(address.strip() for address in (value or "").split(",") if address.strip())


def unconfigured_reason(channel: str, conn_id: str, recipients: Sequence[str] = ()) -> str | None:
    """Why `channel` on `conn_id` cannot send (None when it can). Reading it masks its secrets."""
    connection = read_connection(conn_id)
    if connection is None:
        return f"connection {conn_id!r} is not defined"
    if channel == SLACK:
        if not (connection.password or "").strip():
            return f"connection {conn_id!r} has no webhook token (password)"
        return None
    if not (connection.host or "").strip():
        return f"connection {conn_id!r} has no host"
    if channel == EMAIL and not recipients:
        return f"no recipients (the route's email_to, or Variable {EMAIL_TO_VARIABLE!r})"
    return None


# -- messages ------------------------------------------------------------------------------------------


def error_class(payload: Mapping[str, Any]) -> str | None:
    """`RuntimeError` from an error excerpt `RuntimeError: ...`."""
    error = payload.get("error")
    if not error:
        return None
    head = str(error).split(":", 1)[0].strip()
    return head if head and " " not in head else None


def title(payload: Mapping[str, Any]) -> str:
    target = ".".join(str(p) for p in (payload.get("dag_id"), payload.get("task_id")) if p)
    if payload.get("kind") == "deadline_missed":
        return f"Deadline missed: {target}"
    if payload.get("kind") == "task_failed":
        return f"Task failed: {target}"
    return f"{payload.get('kind')}: {target}"


def _interval(payload: Mapping[str, Any]) -> str:
    interval = payload.get("data_interval") or {}
    start, end = interval.get("start"), interval.get("end")
    return f"{start} → {end}" if start or end else "none (manual run)"


def _where_rows(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    """DAG, task, run, interval, and the deadline of a deadline alert: the first lines of every format."""
    rows = [
        ("DAG", str(payload.get("dag_id"))),
        ("Task", str(payload.get("task_id") or "(the whole run)")),
        ("Run", str(payload.get("run_id"))),
        ("Interval", _interval(payload)),
    ]
    if payload.get("kind") == "deadline_missed":
        rows.append(("Deadline", f"{payload.get('deadline_time')} (queued at {payload.get('queued_at')})"))
    return rows


def summary_rows(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) lines every channel shows, in order."""
    rows = _where_rows(payload)
    if payload.get("kind") != "deadline_missed":
        rows.append(("Error class", error_class(payload) or "unknown"))
        if payload.get("try_number") is not None:
            rows.append(("Try", f"{payload.get('try_number')} (retries: {payload.get('max_tries')})"))
    if payload.get("tier"):
        rows.append(("Tier", str(payload["tier"])))
    return rows


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_message(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook body: `text` (the notification fallback, required) and Block Kit `blocks`."""
    heading = title(payload)
    text = f"{heading} (run {payload.get('run_id')})"
    if error_class(payload):
        text += f": {error_class(payload)}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(heading, SLACK_HEADER_LIMIT)}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": _cut(f"*{label}*\n{_slack_escape(value)}", 2000)}
                for label, value in summary_rows(payload)
            ][:10],
        },
    ]
    if payload.get("error"):
        error = _slack_escape(str(payload["error"])).replace("```", "'''")
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _cut(f"```{error}```", SLACK_TEXT_LIMIT)}}
        )
    runbook = payload.get("runbook") or "see the DAG's docs (## Runbook) in the UI"
    blocks.append(
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": _cut(f"*Runbook:* {_slack_escape(str(runbook))}", SLACK_TEXT_LIMIT),
            },
        }
    )
    if payload.get("url"):
        label = "Open the log" if payload.get("kind") == "task_failed" else "Open the run"
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": label},
                        "url": str(payload["url"])[:3000],
                    }
                ],
            }
        )
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"batchkit alert `{payload.get('kind')}`"}],
        }
    )
    return {"text": _cut(text, SLACK_TEXT_LIMIT), "blocks": blocks}


def email_message(payload: Mapping[str, Any]) -> tuple[str, str]:
    """(subject, html body) of an alert email: a small table, the error, the log link and the runbook."""
    cls = error_class(payload)
    tier = f"[{payload['tier']}] " if payload.get("tier") else ""
    subject = f"[airflow] {tier}{title(payload)}" + (f" ({cls})" if cls else "")
    rows = "".join(
        f'<tr><th align="left" style="padding:2px 12px 2px 0">{html.escape(label)}</th>'
        f"<td><code>{html.escape(value)}</code></td></tr>"
        for label, value in summary_rows(payload)
    )
    parts = [
        f'<h2 style="font-family:sans-serif">{html.escape(title(payload))}</h2>',
        f"<table>{rows}</table>",
    ]
    if payload.get("error"):
        parts.append(
            f'<pre style="background:#f6f8fa;padding:8px">{html.escape(str(payload["error"]))}</pre>'
        )
    if payload.get("url"):
        label = "Open the log" if payload.get("kind") == "task_failed" else "Open the run"
        parts.append(f'<p><a href="{html.escape(str(payload["url"]), quote=True)}">{label}</a></p>')
    runbook = payload.get("runbook") or "see the DAG's docs (## Runbook) in the UI"
    parts.append(f"<p><b>Runbook:</b> {html.escape(str(runbook))}</p>")
    return subject[:250], '<div style="font-family:sans-serif">' + "".join(parts) + "</div>"


# -- the tier-3 digest ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DigestItem:
    """One alert of a digest email: its (scrubbed) payload and how often it repeated since it was queued."""

    payload: Mapping[str, Any]
    repeats: int = 0
    queued_at: Any = None
    last_repeat_at: Any = None


def _first_line(text: Any) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


def digest_rows(item: DigestItem) -> list[tuple[str, str]]:
    """(label, value) lines of one digest entry: DAG, task, run, interval, error class + the message's
    first line (or the deadline), log link, runbook line, repeats."""
    payload = item.payload
    rows = _where_rows(payload)
    if payload.get("kind") != "deadline_missed":
        error = payload.get("error")
        rows.append(("Error", _cut(_first_line(error), 300) if error else "unknown"))
    label = "Log" if payload.get("kind") == "task_failed" else "Run page"
    rows.append((label, str(payload.get("url") or "none")))
    rows.append(("Runbook", str(payload.get("runbook") or "see the DAG's docs (## Runbook) in the UI")))
    repeats = f"{item.repeats} more within the dedup window" if item.repeats else "none"
    if item.repeats and item.last_repeat_at is not None:
        repeats += f" (last at {item.last_repeat_at})"
    rows.append(("Repeats", repeats))
    return rows


def digest_email_message(items: Sequence[DigestItem]) -> tuple[str, str, str]:
    """(subject, plain text, html) of one digest email listing every item, oldest first."""
    if not items:
        raise ValueError("a digest needs at least one alert")
    dags = sorted({str(item.payload.get("dag_id")) for item in items})
    failures = sum(1 + item.repeats for item in items)
    count = f"{len(items)} alert{'s' if len(items) != 1 else ''}"
    if failures != len(items):
        count += f" ({failures} occurrences)"
    tiers = sorted({str(item.payload["tier"]) for item in items if item.payload.get("tier")})
    tier = f"[{', '.join(tiers)}] " if tiers else ""
    subject = _cut(f"[airflow] {tier}Alert digest: {count} from {', '.join(dags)}", 250)

    text_parts = [f"Alert digest: {count}.", ""]
    html_parts = [f'<h2 style="font-family:sans-serif">Alert digest: {html.escape(count)}</h2>']
    for number, item in enumerate(items, start=1):
        heading = title(item.payload)
        rows = digest_rows(item)
        width = max(len(label) for label, _ in rows)
        text_parts.append(f"{number}. {heading}")
        text_parts += [f"   {label + ':':<{width + 1}} {value}" for label, value in rows]
        text_parts.append("")
        cells = "".join(
            f'<tr><th align="left" style="padding:2px 12px 2px 0">{html.escape(label)}</th><td>'
            + (
                f'<a href="{html.escape(value, quote=True)}">{html.escape(value)}</a>'
                if label in ("Log", "Run page") and "://" in value
                else f"<code>{html.escape(value)}</code>"
            )
            + "</td></tr>"
            for label, value in rows
        )
        html_parts.append(f"<h3>{number}. {html.escape(heading)}</h3><table>{cells}</table>")
    text_parts.append("Sent by the DAG platform_alert_digest (tier-3 alerts, hourly).")
    html_parts.append("<p><small>Sent by the DAG platform_alert_digest (tier-3 alerts, hourly).</small></p>")
    body = '<div style="font-family:sans-serif">' + "".join(html_parts) + "</div>"
    return subject, "\n".join(text_parts), body


def send_email(conn_id: str, recipients: Sequence[str], *, subject: str, text: str, html_body: str) -> None:
    """One multipart/alternative email (plain text, then HTML) through the SMTP connection, with the
    providers-smtp SmtpHook (its TLS, login, from_email and retry handling); raises on any error.

    SmtpNotifier and SmtpHook.send_email_smtp build an HTML-only message: the hook's message builder is
    extended here to put the plain-text part first (tests/batchkit/test_alert_digest.py checks both parts
    arrive, so a provider change that breaks this fails there).
    """
    from email.mime.text import MIMEText

    from airflow.providers.smtp.hooks.smtp import SmtpHook

    reason = unconfigured_reason(EMAIL, conn_id, recipients)
    if reason is not None:
        raise ValueError(f"cannot send the alert digest: {reason}")

    class _TextAndHtmlSmtpHook(SmtpHook):
        def _build_mime_message(self, *args: Any, **kwargs: Any) -> Any:
            message, to = super()._build_mime_message(*args, **kwargs)
            charset = kwargs.get("mime_charset", "utf-8")
            message.get_payload().insert(0, MIMEText(text, "plain", charset))
            return message, to

    with _TextAndHtmlSmtpHook(smtp_conn_id=conn_id) as hook:
        hook.send_email_smtp(
            to=list(recipients), subject=subject, html_content=html_body, mime_subtype="alternative"
        )


# -- delivery ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelTarget:
    """One resolved channel of a route: where it sends, ready to go."""

    channel: str
    conn_id: str
    endpoint: str | None = None
    recipients: tuple[str, ...] = ()


def send_to(target: ChannelTarget, payload: Mapping[str, Any]) -> None:
    """Send the (already scrubbed) payload on one channel through its provider notifier; raises on error.

    notify() is called directly rather than through BaseNotifier.__call__: the content is final, and
    Jinja-rendering it would choke on exception messages that contain "{{".
    """
    if target.channel == PAGER:
        from airflow.providers.http.notifications.http import HttpNotifier

        HttpNotifier(
            http_conn_id=target.conn_id,
            endpoint=target.endpoint,
            json=dict(payload),
            headers={"Content-Type": "application/json"},
            extra_options={"timeout": HTTP_TIMEOUT_SECONDS},
        ).notify({})
    elif target.channel == SLACK:
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

        message = slack_message(payload)
        SlackWebhookNotifier(
            slack_webhook_conn_id=target.conn_id,
            text=message["text"],
            blocks=message["blocks"],
            unfurl_links=False,
            timeout=HTTP_TIMEOUT_SECONDS,
        ).notify({})
    elif target.channel == EMAIL:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        subject, body = email_message(payload)
        SmtpNotifier(
            to=list(target.recipients), smtp_conn_id=target.conn_id, subject=subject, html_content=body
        ).notify({})
    else:
        raise ValueError(f"unknown alert channel {target.channel!r} (known: {CHANNELS})")


def deliver_to(targets: Sequence[ChannelTarget], payload: Mapping[str, Any]) -> list[str]:
    """Send on every target; returns the channels that delivered. A failing channel is logged
    (`alert_channel_failed`) and the others still send; only when all fail is the first error raised."""
    delivered: list[str] = []
    errors: list[tuple[str, BaseException]] = []
    for target in targets:
        try:
            send_to(target, payload)
        except Exception as error:
            errors.append((target.channel, error))
            log.warning(
                "alert_channel_failed",
                channel=target.channel,
                conn_id=target.conn_id,
                dag_id=payload.get("dag_id"),
                run_id=payload.get("run_id"),
                error=f"{type(error).__name__}: {error}",
            )
        else:
            delivered.append(target.channel)
    if errors and not delivered:
        first = errors[0][1]
        for channel, error in errors[1:]:
            first.add_note(f"channel {channel} failed too: {type(error).__name__}: {error}")
        raise first
    return delivered


# -- reports: their own delivery target, never an alert channel ---------------------------------------


def send_report(
    payload: Mapping[str, Any],
    *,
    summary: str,
    link: str | None = None,
    webhook_conn_id: str = REPORTS_WEBHOOK_CONN_ID,
    slack_conn_id: str = REPORTS_SLACK_CONN_ID,
) -> dict[str, Any]:
    """Deliver a report: its JSON `payload` to the `reports_webhook` connection (required), and a short
    Slack message (`summary`, a button to `link`) to `reports_slack` when that connection is configured.

    Refuses (ValueError) a webhook that points where alerts go: reports never land in the alerts
    channel. Raises on a delivery error (the report's ledger retries). Returns what the ledger records.
    """
    from airflow.providers.http.hooks.http import HttpHook

    target = read_connection(webhook_conn_id)
    if target is None or not (target.host or "").strip():
        raise ValueError(f"reports need connection {webhook_conn_id!r} (an http connection with a host)")
    alerts = read_connection(DEFAULT_WEBHOOK_CONN_ID)
    if alerts is not None and _same_target(target, alerts):
        raise ValueError(
            f"connection {webhook_conn_id!r} points at the alerts webhook ({DEFAULT_WEBHOOK_CONN_ID!r}): "
            "reports need a delivery target of their own"
        )
    endpoint = target.password if (target.password and not target.login) else None
    response = HttpHook(method="POST", http_conn_id=webhook_conn_id).run(
        endpoint=endpoint,
        json=dict(payload),
        headers={"Content-Type": "application/json"},
        extra_options={"timeout": HTTP_TIMEOUT_SECONDS},
    )
    record: dict[str, Any] = {"http_conn_id": webhook_conn_id, "status": response.status_code, "slack": False}
    if unconfigured_reason(SLACK, slack_conn_id) is None:
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

        blocks: list[dict[str, Any]] = [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _cut(_slack_escape(summary), SLACK_TEXT_LIMIT)},
            }
        ]
        if link:
            blocks.append(
                {
                    "type": "actions",
                    "elements": [
                        {
                            "type": "button",
                            "text": {"type": "plain_text", "text": "Open the report"},
                            "url": link[:3000],
                        }
                    ],
                }
            )
        SlackWebhookNotifier(
            slack_webhook_conn_id=slack_conn_id,
            text=_cut(summary, SLACK_TEXT_LIMIT),
            blocks=blocks,
            timeout=HTTP_TIMEOUT_SECONDS,
        ).notify({})
        record["slack"] = True
    return record


def _same_target(a: Any, b: Any) -> bool:
    def where(c: Any) -> tuple[str, str, str]:
        return ((c.host or "").rstrip("/"), str(c.port or ""), (c.password or "") if not c.login else "")

    return where(a) == where(b)
