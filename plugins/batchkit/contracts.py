"""Records checked against their source's contract; the ones that fail are quarantined, not dropped.

A contract is a pydantic model in include/contracts/ (one module per source). `validate_records` turns
a page of raw records into rows (tuples in the target's column order) and rejects (the record as
received, its position, and pydantic's error text). Rejects land in table `batch_meta.quarantine` of
the warehouse, in the same transaction as the page's staged rows and checkpoint (batchkit.sync).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import psycopg
from psycopg import sql
from pydantic import BaseModel, ValidationError

from batchkit.checkpoints import INTERVAL_KEY_MATCH, RunIdentity
from batchkit.migrations import require_current

_QUARANTINE_COLUMNS = (
    "dag_id, task_id, run_id, interval_start, interval_end, source, "
    "page_number, record_index, payload, payload_text, error"
)


@dataclass(frozen=True)
class RecordContract:
    """A source's name (as recorded in quarantine) and the model every one of its records must fit."""

    source: str
    model: type[BaseModel]


@dataclass(frozen=True)
class Rejected:
    index: int
    payload: Any
    error: str


@dataclass(frozen=True)
class ValidatedPage:
    rows: list[tuple[Any, ...]]
    rejected: list[Rejected]


RowRule = Callable[[tuple[Any, ...]], str | None]


def validate_records(
    contract: RecordContract,
    records: Sequence[Any],
    columns: Sequence[str],
    *,
    row_rule: RowRule | None = None,
) -> ValidatedPage:
    """Split `records` into rows of `columns` (model fields) and rejects.

    `row_rule` is an extra check on a valid row (e.g. "inside the interval being replaced"): it returns
    the reason to reject the row, or None to keep it.
    """
    fields = contract.model.model_fields
    if missing := [column for column in columns if column not in fields]:
        raise ValueError(
            f"contract {contract.model.__module__}.{contract.model.__name__} has no field(s) {missing} "
            f"for target columns {list(columns)}"
        )
    pick = attrgetter(*columns)
    as_row = (lambda model: (pick(model),)) if len(columns) == 1 else pick
    # model_validate(record) without its per-call wrapper: the same validator, ~0.7 us a record less.
    validate = contract.model.__pydantic_validator__.validate_python
    with _cyclic_gc_paused():
        try:
            # Most pages are entirely valid: map() validates them without a bytecode loop per record.
            rows = list(map(as_row, map(validate, records)))
        except ValidationError:
            rows, origins, rejected = _validate_one_by_one(validate, as_row, records)
        else:
            origins, rejected = range(len(rows)), []
    if row_rule is not None:
        rows = _apply_row_rule(row_rule, rows, origins, records, rejected)
    return ValidatedPage(rows=rows, rejected=rejected)


def _validate_one_by_one(
    validate: Callable[[Any], BaseModel],
    as_row: Callable[[BaseModel], tuple[Any, ...]],
    records: Sequence[Any],
) -> tuple[list[tuple[Any, ...]], list[int], list[Rejected]]:
    """Rows, the index of the record each came from, and the rejects, of a page holding invalid records."""
    rows: list[tuple[Any, ...]] = []
    origins: list[int] = []
    rejected: list[Rejected] = []
    for index, record in enumerate(records):
        try:
            rows.append(as_row(validate(record)))
        except ValidationError as exc:
            rejected.append(Rejected(index, record, validation_error_text(exc)))
        else:
            origins.append(index)
    return rows, origins, rejected


def _apply_row_rule(
    row_rule: RowRule,
    rows: list[tuple[Any, ...]],
    origins: Sequence[int],
    records: Sequence[Any],
    rejected: list[Rejected],
) -> list[tuple[Any, ...]]:
    """The rows `row_rule` keeps; the others join `rejected` (kept in record order) with its reason."""
    kept: list[tuple[Any, ...]] = []
    for index, row in zip(origins, rows, strict=True):
        reason = row_rule(row)
        if reason is None:
            kept.append(row)
        else:
            rejected.append(Rejected(index, records[index], reason))
    rejected.sort(key=attrgetter("index"))
    return kept


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Defer the cyclic garbage collector while a page is validated.

    Validation allocates several container objects per record and keeps a row of each, so the
    collector runs again and again over a worker's large heap (Airflow's modules) and finds nothing
    to free: reference counting already frees the models and the errors. That was about a quarter of
    a sync's CPU time (bench/extract_load.py). Anything cyclic a contract's own validator builds is
    collected once the page is done; the collector stays off only if someone else had turned it off.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def validation_error_text(exc: ValidationError) -> str:
    """pydantic's errors on one line each, without the input echo and documentation links."""
    details = "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or '<record>'}: {error['msg']} [type={error['type']}]"
        for error in exc.errors(include_url=False, include_input=False)
    )
    return f"{exc.error_count()} validation error(s) for {exc.title}: {details}"


def ensure_quarantine(conn: psycopg.Connection) -> None:
    """Check the control tables are at the version this code needs (batchkit.migrations.require_current:
    one SELECT per process and database); they are created by the migrations at deploy, never here."""
    require_current(conn)


def quarantine_records(
    conn: psycopg.Connection,
    identity: RunIdentity,
    source: str,
    page_number: int,
    rejected: Sequence[Rejected],
) -> int:
    """Insert one page's rejects (in the caller's transaction); returns how many."""
    if not rejected:
        return 0
    with (
        conn.cursor() as cur,
        cur.copy(f"COPY batch_meta.quarantine ({_QUARANTINE_COLUMNS}) FROM STDIN") as copy,
    ):
        for reject in rejected:
            payload, payload_text = _payload_columns(reject.payload)
            copy.write_row(
                (
                    identity.dag_id,
                    identity.sync_key,
                    identity.run_id,
                    identity.interval.start,
                    identity.interval.end,
                    source,
                    page_number,
                    reject.index,
                    payload,
                    payload_text,
                    _storable_text(reject.error),
                )
            )
    return len(rejected)


def count_quarantined(conn: psycopg.Connection, identity: RunIdentity) -> int:
    return conn.execute(
        sql.SQL("SELECT count(*) FROM batch_meta.quarantine WHERE {}").format(INTERVAL_KEY_MATCH),
        identity.key(),
    ).fetchone()[0]


def clear_quarantine(conn: psycopg.Connection, identity: RunIdentity) -> int:
    """Delete the interval's quarantined records of this dag/task (a fresh run re-validates them)."""
    return conn.execute(
        sql.SQL("DELETE FROM batch_meta.quarantine WHERE {}").format(INTERVAL_KEY_MATCH), identity.key()
    ).rowcount


def _payload_columns(record: Any) -> tuple[str | None, str | None]:
    """(payload jsonb, payload_text): a JSON object Postgres accepts as jsonb, else the record's text."""
    if isinstance(record, Mapping):
        try:
            text = json.dumps(record, allow_nan=False)
        except (TypeError, ValueError):
            pass
        else:
            # jsonb rejects the NUL escape; such a record is kept as text instead.
            if "\\u0000" not in text:
                return text, None
    try:
        text = json.dumps(record)
    except (TypeError, ValueError):
        text = repr(record)
    return None, _storable_text(text)


def _storable_text(text: str) -> str:
    """Postgres text cannot hold NUL characters; keep them visible as an escape."""
    return text.replace("\x00", "\\x00")
