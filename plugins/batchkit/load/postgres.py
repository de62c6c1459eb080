"""Records into a warehouse table: COPY into a run's staging table, then one merge transaction.

The path, and why each step looks the way it does:

- The target table is declared in include/sql/targets/*.sql (applied idempotently) and described in
  Python by a `TargetSpec`: its columns in load order, its key, how an interval is merged. The spec is
  checked against the catalog before loading, so a drift between the two fails with both named.
- Staging is an UNLOGGED copy of the target (`LIKE` it, plus a `_batch_seq` identity recording arrival
  order) in schema batch_meta, named from the target and the run's scope (dag, task, interval) by a
  hash: a retry of the same run finds the same table, two intervals never share one. UNLOGGED skips
  WAL for rows that are written once and read once; the price — Postgres empties unlogged tables after
  a server crash — is paid by the caller's resume check, which compares the staged row count with its
  checkpoint and starts the interval over when they disagree.
- Rows go in with binary COPY (psycopg 3 `write_row`, about 3x the rows/s of text COPY here), the
  column types taken from the catalog; a type without a binary dumper falls back to text COPY.
- The merge runs in the caller's transaction, which also drops the staging table. Both modes read the
  staged rows as `DISTINCT ON (key) ... ORDER BY key, _batch_seq DESC`: a key delivered twice keeps
  its last delivery, and rows reach the target's index in key order. `upsert` UPDATEs the keys the
  target has where something changed (`IS DISTINCT FROM`, so a reload rewrites nothing and `updated`
  counts real changes), then INSERTs the keys it lacks; see `_upsert` for why not one ON CONFLICT
  statement, and how a concurrent merge inserting the same key is handled. `replace_interval`
  deletes [start, end) by the spec's timestamp column, then upserts the staged rows the same way
  (a key may still live outside the interval). Merges of different intervals only meet on rows with
  common keys; nothing else in them locks the target.
- Versions never go backwards: with a `version_column` declared (a sync's defaults to its interval
  column, `updated_at`), a stored row is replaced only by a staged row whose version is the same or
  newer, in both the UPDATE and the ON CONFLICT branch. A backfill of last month merged after today's
  run leaves today's rows alone; reloading an interval still re-applies its rows (equal versions).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import pq, sql

from batchkit.load.identifiers import checked_columns, checked_identifier, identifier_parts
from batchkit.migrations import require_current
from batchkit.sql_files import apply_sql_file

STAGING_SCHEMA = "batch_meta"
ERROR_EXCERPT_CHARS = 200
STAGING_SEQUENCE_COLUMN = "_batch_seq"
# "stg_" + 40 + "_" + 16 hex digits stays within Postgres' 63-character identifiers.
_STAGING_TABLE_PREFIX_CHARS = 40
_STAGING_DIGEST_CHARS = 16


class MergeMode(StrEnum):
    UPSERT = "upsert"
    REPLACE_INTERVAL = "replace_interval"


@dataclass(frozen=True)
class TargetSpec:
    """A warehouse table the load path writes: a sync's is declared by its contract module (TARGET in
    include/contracts/<table>.py, the one place its table, columns and key are stated) and created by
    its DDL file under include/, which tests/batchkit/test_contracts.py checks against the contract.

    `columns` is the order in which rows arrive (the contract's tuples); `key` must be a unique index of
    the table (its primary key, normally) and is required for `upsert`. `interval_column` is the
    timestamp column whose [start, end) partition `replace_interval` deletes and re-inserts.
    `version_column`, when set, orders the versions of one key: a merge never replaces a stored row
    with an older version of it (see the module docstring).
    """

    table: str
    ddl: str
    columns: tuple[str, ...]
    key: tuple[str, ...] = ()
    mode: MergeMode = MergeMode.UPSERT
    interval_column: str | None = None
    version_column: str | None = None

    def __post_init__(self) -> None:
        identifier_parts(self.table, "target.table")
        checked_columns(self.columns, f"{self.table}: columns")
        checked_columns(self.key, f"{self.table}: key")
        if not self.columns:
            raise ValueError(f"target {self.table}: columns must not be empty")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"target {self.table}: duplicate column in {self.columns}")
        if missing := [column for column in self.key if column not in self.columns]:
            raise ValueError(
                f"target {self.table}: key columns {missing} are not among columns {self.columns}"
            )
        object.__setattr__(self, "mode", MergeMode(self.mode))
        if self.mode is MergeMode.UPSERT and not self.key:
            raise ValueError(f"target {self.table}: mode 'upsert' needs key columns")
        if self.mode is MergeMode.REPLACE_INTERVAL and self.interval_column not in self.columns:
            raise ValueError(
                f"target {self.table}: mode 'replace_interval' needs interval_column among columns "
                f"{self.columns}, got {self.interval_column!r}"
            )
        if self.version_column is not None and self.version_column not in self.columns:
            raise ValueError(
                f"target {self.table}: version_column {self.version_column!r} is not among columns "
                f"{self.columns}"
            )
        if self.version_column in self.key:
            raise ValueError(
                f"target {self.table}: version_column {self.version_column!r} is part of the key"
            )

    @property
    def interval_column_index(self) -> int:
        return self.columns.index(self.interval_column)


@dataclass(frozen=True)
class Staging:
    """The staging table of one run's load into `target` (it exists only once rows were staged)."""

    target: TargetSpec
    table: str
    column_types: tuple[int, ...]
    copy_format: pq.Format


@dataclass(frozen=True)
class MergeCounts:
    inserted: int
    updated: int
    deleted: int


def staging_table_name(target: TargetSpec, run_scope: str) -> str:
    """Deterministic, schema-qualified staging table for `target` loaded by the run named `run_scope`."""
    digest = hashlib.sha256(f"{target.table}\n{run_scope}".encode()).hexdigest()[:_STAGING_DIGEST_CHARS]
    short_name = target.table.rsplit(".", 1)[-1][:_STAGING_TABLE_PREFIX_CHARS]
    return f"{STAGING_SCHEMA}.stg_{short_name}_{digest}"


def prepare_staging(conn: psycopg.Connection, target: TargetSpec, run_scope: str) -> Staging:
    """Apply the target's DDL, check the table against the spec, and name the run's staging table."""
    # Staging lives in batch_meta beside the checkpoints that account for its rows; the migrations make it.
    require_current(conn)
    apply_sql_file(conn, target.ddl)
    column_types = _checked_column_types(conn, target)
    return Staging(
        target=target,
        table=staging_table_name(target, run_scope),
        column_types=column_types,
        copy_format=_copy_format(conn, column_types),
    )


def staging_row_count(conn: psycopg.Connection, staging: Staging) -> int | None:
    """Rows in the staging table, or None when it does not exist."""
    if not table_exists(conn, staging.table):
        return None
    return conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(checked_identifier(staging.table, "staging table"))
    ).fetchone()[0]


def stage_rows(conn: psycopg.Connection, staging: Staging, rows: Iterable[Sequence[Any]]) -> int:
    """COPY `rows` (tuples in `target.columns` order) into the staging table; returns the row count.

    Runs in the caller's transaction, and creates the staging table on first use.
    """
    _create_staging_if_missing(conn, staging)
    statement = sql.SQL("COPY {staging} ({columns}) FROM STDIN (FORMAT {format})").format(
        staging=checked_identifier(staging.table, "staging table"),
        columns=checked_columns(staging.target.columns, "target.columns"),
        format=sql.SQL(staging.copy_format.name),
    )
    staged = 0
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types(list(staging.column_types))
        write_row = copy.write_row
        for staged, row in enumerate(rows, start=1):
            try:
                write_row(row)
            except (TypeError, ValueError, psycopg.DataError) as exc:
                # The value types, never the values: this text reaches task logs and alerts, and a
                # record can hold personal data.
                value_types = ", ".join(type(value).__name__ for value in row)
                raise ValueError(
                    f"row {staged} for {staging.target.table} does not fit columns "
                    f"{staging.target.columns}: {str(exc)[:ERROR_EXCERPT_CHARS]} (value types: {value_types})"
                ) from None
    return staged


def drop_staging(conn: psycopg.Connection, staging: Staging) -> None:
    conn.execute(
        sql.SQL("DROP TABLE IF EXISTS {}").format(checked_identifier(staging.table, "staging table"))
    )


def merge_staging(
    conn: psycopg.Connection, staging: Staging, interval: tuple[datetime, datetime]
) -> MergeCounts:
    """Merge the staged rows into the target and drop the staging table, in the caller's transaction.

    `interval` is the [start, end) that `replace_interval` replaces; an interval with nothing staged
    still replaces (with nothing), since the source said it holds no rows.
    """
    _create_staging_if_missing(conn, staging)
    target = staging.target
    deleted = 0
    if target.mode is MergeMode.REPLACE_INTERVAL:
        start, end = interval
        deleted = conn.execute(
            sql.SQL("DELETE FROM {target} WHERE {column} >= %(start)s AND {column} < %(end)s").format(
                target=checked_identifier(target.table, "target.table"),
                column=checked_identifier(target.interval_column, "interval_column", allow_schema=False),
            ),
            {"start": start, "end": end},
        ).rowcount
    if target.key:
        inserted, updated = _upsert(conn, staging)
    else:
        inserted, updated = _insert_all(conn, staging), 0
    drop_staging(conn, staging)
    return MergeCounts(inserted=inserted, updated=updated, deleted=deleted)


def _insert_all(conn: psycopg.Connection, staging: Staging) -> int:
    """Without a key there is nothing to match: the staged rows are the interval's rows."""
    target = staging.target
    return conn.execute(
        sql.SQL("INSERT INTO {target} ({columns}) {rows}").format(
            target=checked_identifier(target.table, "target.table"),
            columns=checked_columns(target.columns, "target.columns"),
            rows=_latest_staged_rows(staging),
        )
    ).rowcount


def _upsert(conn: psycopg.Connection, staging: Staging) -> tuple[int, int]:
    """UPDATE the staged keys the target has (where something changed and the stored version is not
    newer), then INSERT the ones it lacks; returns (inserted, updated).

    Two plain statements instead of one INSERT ... ON CONFLICT DO UPDATE: speculative insertion costs
    every inserted row an extra index probe and WAL record, and measured ~1 s more per million rows here
    (bench/load_path.py). READ COMMITTED leaves one race: a concurrent merge that inserts one of our new
    keys after the INSERT's snapshot makes it fail with a unique violation. The savepoint then undoes
    just the INSERT and ON CONFLICT settles the rows, waiting for the other merge and then overriding
    it, as the later merge should. (Merges whose UPDATEs lock common rows in opposite orders deadlock;
    Postgres aborts one and its retry resumes from the checkpoint and merges again.)
    """
    target = staging.target
    payload_columns = [column for column in target.columns if column not in target.key]
    updated = 0
    # An empty target has nothing to update, and the UPDATE would still sort every staged row to find
    # that out (0.4 s per million: the first load of a table, a backfill into a new one). A row another
    # merge commits after this check is settled by the INSERT's unique-violation path below.
    if payload_columns and _has_rows(conn, target.table):
        updated = conn.execute(
            sql.SQL(
                """
                UPDATE {target} AS current_row SET {assignments}
                  FROM ({rows}) AS staged
                 WHERE ({current_key}) = ({staged_key})
                   AND ({current}) IS DISTINCT FROM ({incoming})
                   {not_older}
                """
            ).format(
                target=checked_identifier(target.table, "target.table"),
                assignments=sql.SQL(", ").join(
                    sql.SQL("{column} = staged.{column}").format(column=sql.Identifier(column))
                    for column in payload_columns
                ),
                rows=_latest_staged_rows(staging),
                current_key=_qualified("current_row", target.key),
                staged_key=_qualified("staged", target.key),
                current=_qualified("current_row", payload_columns),
                incoming=_qualified("staged", payload_columns),
                not_older=_not_older(target, "staged"),
            )
        ).rowcount
    try:
        with conn.transaction():
            inserted = conn.execute(
                sql.SQL(
                    """
                    INSERT INTO {target} ({columns})
                    SELECT {staged_columns} FROM ({rows}) AS staged
                     WHERE NOT EXISTS (SELECT FROM {target} AS current_row
                                        WHERE ({current_key}) = ({staged_key}))
                     ORDER BY {staged_key}
                    """
                ).format(
                    target=checked_identifier(target.table, "target.table"),
                    columns=checked_columns(target.columns, "target.columns"),
                    staged_columns=_qualified("staged", target.columns),
                    rows=_latest_staged_rows(staging),
                    current_key=_qualified("current_row", target.key),
                    staged_key=_qualified("staged", target.key),
                )
            ).rowcount
    except psycopg.errors.UniqueViolation:
        inserted, updated_late = conn.execute(_on_conflict_upsert(staging, payload_columns)).fetchone()
        updated += updated_late
    return inserted, updated


def _not_older(target: TargetSpec, incoming: str) -> sql.Composable:
    """`AND` the stored row's version is not newer than the incoming one (nothing without a version).

    A NULL on either side does not block the update: an unknown version cannot prove the row is newer.
    """
    if target.version_column is None:
        return sql.SQL("")
    return sql.SQL("AND ({current} > {incoming}) IS NOT TRUE").format(
        current=sql.Identifier("current_row", target.version_column),
        incoming=sql.Identifier(incoming, target.version_column),
    )


def _on_conflict_upsert(staging: Staging, payload_columns: list[str]) -> sql.Composed:
    target = staging.target
    if payload_columns:
        on_conflict = sql.SQL(
            "DO UPDATE SET {assignments} WHERE ({current}) IS DISTINCT FROM ({incoming}) {not_older}"
        ).format(
            assignments=sql.SQL(", ").join(
                sql.SQL("{column} = excluded.{column}").format(column=sql.Identifier(column))
                for column in payload_columns
            ),
            current=_qualified("current_row", payload_columns),
            incoming=_qualified("excluded", payload_columns),
            not_older=_not_older(target, "excluded"),
        )
    else:
        on_conflict = sql.SQL("DO NOTHING")
    # xmax is 0 on a freshly inserted row version and set on one that ON CONFLICT updated.
    return sql.SQL(
        """
        WITH merged AS (
            INSERT INTO {target} AS current_row ({columns})
            {rows}
            ON CONFLICT ({key}) {on_conflict}
            RETURNING (xmax = 0) AS inserted
        )
        SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM merged
        """
    ).format(
        target=checked_identifier(target.table, "target.table"),
        columns=checked_columns(target.columns, "target.columns"),
        rows=_latest_staged_rows(staging),
        key=checked_columns(target.key, "target.key"),
        on_conflict=on_conflict,
    )


def _qualified(alias: str, columns: Sequence[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(alias, column) for column in columns)


def _latest_staged_rows(staging: Staging) -> sql.Composed:
    """The staged rows, one per key (the last one staged), in key order; all of them without a key."""
    target = staging.target
    columns = checked_columns(target.columns, "target.columns")
    table = checked_identifier(staging.table, "staging table")
    if not target.key:
        return sql.SQL("SELECT {columns} FROM {table}").format(columns=columns, table=table)
    key = checked_columns(target.key, "target.key")
    return sql.SQL("SELECT DISTINCT ON ({key}) {columns} FROM {table} ORDER BY {key}, {seq} DESC").format(
        key=key, columns=columns, table=table, seq=sql.Identifier(STAGING_SEQUENCE_COLUMN)
    )


def _create_staging_if_missing(conn: psycopg.Connection, staging: Staging) -> None:
    if table_exists(conn, staging.table):
        return
    # CACHE: a session takes 1000 values of the sequence at a time instead of one per row (0.15 s of the
    # 1.7 s of staging a million rows here, BENCHMARKS.md). Arrival order still holds: one session stages
    # an interval at a time (the interval lock), and a later session's block starts after every earlier one.
    conn.execute(
        sql.SQL(
            "CREATE UNLOGGED TABLE {staging} (LIKE {target} INCLUDING DEFAULTS, "
            "{seq} bigint GENERATED ALWAYS AS IDENTITY (CACHE 1000))"
        ).format(
            staging=checked_identifier(staging.table, "staging table"),
            target=checked_identifier(staging.target.table, "target.table"),
            seq=sql.Identifier(STAGING_SEQUENCE_COLUMN),
        )
    )


def _has_rows(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute(
        sql.SQL("SELECT EXISTS (SELECT FROM {table})").format(table=checked_identifier(table, "target.table"))
    ).fetchone()[0]


def table_exists(conn: psycopg.Connection, table: str) -> bool:
    """Whether `table` (schema-qualified, or on the search path) exists."""
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]


def _checked_column_types(conn: psycopg.Connection, target: TargetSpec) -> tuple[int, ...]:
    """Type oids of the spec's columns, after checking the table has them and a unique index on the key."""
    where = f"target {target.table} (declared in include/{target.ddl})"
    found = dict(
        conn.execute(
            """
            SELECT attname, atttypid::int FROM pg_attribute
             WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped
            """,
            (target.table,),
        ).fetchall()
    )
    if not found:
        raise ValueError(f"{where} does not exist after applying its DDL")
    if missing := [column for column in target.columns if column not in found]:
        raise ValueError(f"{where} has no column(s) {missing}; it has {sorted(found)}")
    if target.key and not _has_unique_index(conn, target):
        raise ValueError(f"{where} has no unique index on key {target.key}; declare it as the primary key")
    return tuple(found[column] for column in target.columns)


def _has_unique_index(conn: psycopg.Connection, target: TargetSpec) -> bool:
    return conn.execute(
        """
        SELECT EXISTS (
            SELECT 1 FROM pg_index AS i
             WHERE i.indrelid = to_regclass(%(table)s) AND i.indisunique AND i.indpred IS NULL
               AND (SELECT array_agg(a.attname::text ORDER BY a.attname)
                      FROM pg_attribute AS a
                     WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)) = %(key)s
               AND i.indnkeyatts = cardinality(%(key)s)
        )
        """,
        {"table": target.table, "key": sorted(target.key)},
    ).fetchone()[0]


def _copy_format(conn: psycopg.Connection, column_types: tuple[int, ...]) -> pq.Format:
    try:
        for oid in column_types:
            conn.adapters.get_dumper_by_oid(oid, pq.Format.BINARY)
    except psycopg.ProgrammingError:
        return pq.Format.TEXT
    return pq.Format.BINARY
