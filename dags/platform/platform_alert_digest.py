"""platform_alert_digest: hourly email digest of the tier-3 alerts queued in batch_meta.alert_digest."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import CronTriggerTimetable, get_current_context, task

from batchkit.dag_factory import dry_run_requested, standard_dag
from batchkit.observability import get_logger, run_fields
from batchkit.taxonomy import Tag

WAREHOUSE_POOL = "warehouse"

DOC = """
# platform_alert_digest

Tier-3 DAGs (`tier:3`) do not email each alert: a final task failure or a missed deadline is queued in
`batch_meta.alert_digest` (warehouse database), after the usual silences and dedup window. Every hour
this DAG sends **one email per recipient list** listing every queued alert: DAG, task, run, data
interval, error class and the message's first line (or the deadline), the log link, the DAG's runbook
line and how many times it repeated within the dedup window. Plain text + HTML, through the SMTP
connection the alert was routed to (`alerts_smtp` by default) and the recipients it was queued for
(the route's `email_to`, else Variable `batch_alert_email_to`).

| Task | Does |
|---|---|
| `send_digest` (pool `warehouse`) | claims the queued alerts into one batch per recipient list, sends each batch once through the side-effect ledger (key `alert_digest:<batch>`) and marks its alerts sent in the same commit |

Logic in `plugins/batchkit/alerts.py` (`send_alert_digests`). `dry_run=true` renders every email the
run would send into the task log (`alert_digest_preview`) and sends and marks nothing.

This DAG is `tier:2`: its own failure goes to Slack at once, not into the digest it failed to send.

## How to backfill
Nothing to backfill: a run sends everything queued and not sent yet, whenever it was queued
(`catchup=False`).

## How to rerun
Clear the failed task. A batch whose email went out is marked sent with its ledger key `done` and is
never sent again; a batch whose send failed is still claimed and is sent by the rerun (or the next
hourly run), together with the alerts queued since, which go in a second email.

## Alerts
- `task_failed` on `send_digest`: the SMTP server refused or was unreachable (`alert_digest_send_failed`
  in the log names the batch), the SMTP connection is missing, or the warehouse is down.
- `deadline_missed`: the run was not done 30 min after it was queued.

## Runbook
- Send failed: fix the SMTP connection (`alerts_smtp`: host, port, TLS, login) or wait for the relay,
  then clear `send_digest`; nothing is lost, the queued alerts wait in `batch_meta.alert_digest`.
- Urgent tier-3 alerts while the digest is broken: `SELECT dag_id, task_id, run_id, payload->>'error',
  repeats FROM batch_meta.alert_digest WHERE sent_at IS NULL ORDER BY id;`
- A batch that keeps failing: its error is on the ledger row (`batch_meta.side_effects`, key
  `alert_digest:<batch>`, column `last_error`).
"""

log = get_logger(__name__)


with standard_dag(
    "platform_alert_digest",
    owner="platform-team",
    tags=[Tag.DOMAIN_PLATFORM, Tag.KIND_MAINTENANCE, Tag.TIER_2],
    schedule=CronTriggerTimetable("5 * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    deadline=timedelta(minutes=30),
    retries=3,
    doc_md=DOC,
    description="Hourly email digest of the queued tier-3 alerts, one email per recipient list.",
):

    @task(task_id="send_digest", pool=WAREHOUSE_POOL)
    def send_digest() -> list[dict[str, Any]]:
        from batchkit.alerts import send_alert_digests
        from batchkit.hooks.warehouse import WarehouseHook

        context = get_current_context()
        dry_run = dry_run_requested(context)
        with WarehouseHook().autocommit_connection() as conn:
            deliveries = send_alert_digests(conn, claimed_by=context["run_id"], dry_run=dry_run)
        log.info("alert_digest_done", emails=len(deliveries), dry_run=dry_run, **run_fields(context))
        return [delivery.as_json() for delivery in deliveries]

    send_digest()
