"""Delivering a report, for any automation that sends one: once per key through the side-effect ledger.

The delivery is a side effect keyed by what it reports (e.g. `<dag_id>:<day>:webhook`) through
batchkit.ledger.perform_once: at most once across retries, clears and reruns, again only with
`force=True`. It goes to the reports target (batchkit.alert_channels.send_report: connection
`reports_webhook`, plus `reports_slack` when configured), never to an alerts channel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import psycopg

from batchkit.ledger import LedgerOutcome, perform_once


def deliver_once(
    conn: psycopg.Connection,
    key: str,
    payload: Mapping[str, Any],
    *,
    summary: str,
    link: str,
    force: bool = False,
    dry_run: bool = False,
    send: Callable[..., dict[str, Any]] | None = None,
) -> LedgerOutcome:
    """Send `payload` to the reports target unless the ledger says `key` was sent; `force` sends again.
    The message is `summary — link`; `link` becomes a button only when it is a URL (not a local path).
    `send` is batchkit.alert_channels.send_report unless given (tests)."""
    if send is None:
        from batchkit.alert_channels import send_report as send

    return perform_once(
        conn,
        key,
        lambda: send(payload, summary=f"{summary} — {link}", link=link if "://" in link else None),
        force=force,
        dry_run=dry_run,
    )
