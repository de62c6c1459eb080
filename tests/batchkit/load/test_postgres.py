"""batchkit.load.postgres: COPY staging and merges against the session's real warehouse database."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from batchkit.load.postgres import (
    MergeCounts,
    MergeMode,
    TargetSpec,
    merge_staging,
    prepare_staging,
    stage_rows,
    staging_row_count,
    staging_table_name,
)
from include.contracts.orders import TARGET as ORDERS

DAY = (datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 2, tzinfo=UTC))


VERSIONED = dataclasses.replace(ORDERS, version_column="updated_at")


def order_row(
    order_id: int, *, amount: str = "10.00", status: str = "paid", hour: int = 10, updated_days: int = 0
) -> tuple:
    """An order placed on DAY; `updated_days` later versions of it carry a later updated_at."""
    ts = DAY[0] + timedelta(hours=hour)
    updated_at = ts + timedelta(days=updated_days, minutes=5)
    return (order_id, 100 + order_id, ts, updated_at, Decimal(amount), status)


def orders_checksum(conn: psycopg.Connection) -> tuple[int, str]:
    return conn.execute(
        "SELECT count(*), md5(coalesce(string_agg(o::text, '|' ORDER BY order_id), '')) FROM sales.orders o"
    ).fetchone()


def load(conn: psycopg.Connection, target: TargetSpec, scope: str, pages: list[list[tuple]]):
    staging = prepare_staging(conn, target, scope)
    for rows in pages:
        with conn.transaction():
            stage_rows(conn, staging, rows)
    with conn.transaction():
        return merge_staging(conn, staging, DAY)


@pytest.fixture
def orders(warehouse: psycopg.Connection) -> psycopg.Connection:
    prepare_staging(warehouse, ORDERS, "fixture")
    warehouse.execute("TRUNCATE sales.orders")
    return warehouse


def test_target_spec_rejects_inconsistent_declarations() -> None:
    with pytest.raises(ValueError, match=r"key columns \['id'\] are not among columns"):
        TargetSpec(table="s.t", ddl="x.sql", columns=("a",), key=("id",))
    with pytest.raises(ValueError, match="mode 'upsert' needs key columns"):
        TargetSpec(table="s.t", ddl="x.sql", columns=("a",))
    with pytest.raises(ValueError, match="needs interval_column among columns"):
        TargetSpec(table="s.t", ddl="x.sql", columns=("a",), mode="replace_interval", interval_column="ts")
    with pytest.raises(ValueError, match=r"s\.t: columns\[1\]: 'b; drop' is not a valid name"):
        TargetSpec(table="s.t", ddl="x.sql", columns=("a", "b; drop"), key=("a",))


def test_spec_that_drifted_from_its_ddl_fails_naming_both(warehouse: psycopg.Connection) -> None:
    drifted = dataclasses.replace(ORDERS, columns=(*ORDERS.columns, "discount"))
    with pytest.raises(
        ValueError, match=r"sales\.orders \(declared in include/sql/targets/sales_orders\.sql\) "
    ):
        prepare_staging(warehouse, drifted, "scope")
    wrong_key = dataclasses.replace(ORDERS, key=("customer_id",))
    with pytest.raises(ValueError, match=r"no unique index on key \('customer_id',\)"):
        prepare_staging(warehouse, wrong_key, "scope")


def test_staging_name_is_deterministic_per_run_scope() -> None:
    name = staging_table_name(ORDERS, "dag|task|2024-05-01|2024-05-02")
    assert name == staging_table_name(ORDERS, "dag|task|2024-05-01|2024-05-02")
    assert name != staging_table_name(ORDERS, "dag|task|2024-05-02|2024-05-03")
    assert name.startswith("batch_meta.stg_orders_")
    assert len(name.split(".")[1]) <= 63


def test_copy_then_upsert_inserts_updates_and_skips_unchanged(orders: psycopg.Connection) -> None:
    first = load(orders, ORDERS, "upsert-1", [[order_row(1), order_row(2)], [order_row(3)]])
    assert (first.inserted, first.updated, first.deleted) == (3, 0, 0)

    second = load(orders, ORDERS, "upsert-2", [[order_row(2), order_row(3, amount="99.95"), order_row(4)]])
    assert (second.inserted, second.updated, second.deleted) == (1, 1, 0)
    assert orders.execute("SELECT order_id, amount FROM sales.orders ORDER BY order_id").fetchall() == [
        (1, Decimal("10.00")),
        (2, Decimal("10.00")),
        (3, Decimal("99.95")),
        (4, Decimal("10.00")),
    ]


def test_duplicate_keys_across_pages_keep_the_last_delivery(orders: psycopg.Connection) -> None:
    pages = [
        [order_row(7, status="pending"), order_row(8)],
        [order_row(7, status="paid"), order_row(7, status="shipped")],
        [order_row(9)],
    ]
    counts = load(orders, ORDERS, "dups", pages)
    assert counts.inserted == 3
    assert orders.execute("SELECT status FROM sales.orders WHERE order_id = 7").fetchone() == ("shipped",)


def test_replace_interval_deletes_the_partition_and_leaves_other_days(orders: psycopg.Connection) -> None:
    by_day = dataclasses.replace(ORDERS, mode=MergeMode.REPLACE_INTERVAL, interval_column="order_ts")
    next_day = (
        order_row(50)[0],
        150,
        DAY[1] + timedelta(hours=1),
        DAY[1] + timedelta(hours=2),
        Decimal(1),
        "paid",
    )
    load(orders, by_day, "day-0", [[next_day]])  # a row of the following day, outside DAY
    load(orders, by_day, "day-1", [[order_row(1), order_row(2), order_row(3)]])

    counts = load(orders, by_day, "day-1-again", [[order_row(2, amount="5.00")]])

    assert (counts.inserted, counts.updated, counts.deleted) == (1, 0, 3)
    assert orders.execute("SELECT order_id, amount FROM sales.orders ORDER BY order_id").fetchall() == [
        (2, Decimal("5.00")),
        (50, Decimal("1")),
    ]


def test_an_older_version_never_replaces_a_newer_one(orders: psycopg.Connection) -> None:
    day_1 = [order_row(1, status="paid"), order_row(2, status="paid")]
    day_2 = [order_row(1, status="refunded", amount="0.00", updated_days=1)]

    load(orders, VERSIONED, "newer-first-2", [day_2])
    older_after = load(orders, VERSIONED, "newer-first-1", [day_1])
    newer_first = orders_checksum(orders)

    assert (older_after.inserted, older_after.updated) == (1, 0)
    assert orders.execute("SELECT status, amount FROM sales.orders WHERE order_id = 1").fetchone() == (
        "refunded",
        Decimal("0.00"),
    )
    orders.execute("TRUNCATE sales.orders")
    load(orders, VERSIONED, "in-order-1", [day_1])
    newer_after = load(orders, VERSIONED, "in-order-2", [day_2])
    assert newer_after.updated == 1
    assert orders_checksum(orders) == newer_first


def test_an_equal_version_is_reapplied_so_a_reload_can_correct_a_row(orders: psycopg.Connection) -> None:
    load(orders, VERSIONED, "first", [[order_row(1, amount="10.00")]])
    corrected = load(orders, VERSIONED, "restated", [[order_row(1, amount="12.00")]])
    assert corrected.updated == 1
    assert orders.execute("SELECT amount FROM sales.orders WHERE order_id = 1").fetchone() == (
        Decimal("12.00"),
    )


def test_replace_interval_keeps_a_newer_version_of_a_key_that_moved_out(orders: psycopg.Connection) -> None:
    by_update_day = dataclasses.replace(
        VERSIONED, mode=MergeMode.REPLACE_INTERVAL, interval_column="updated_at"
    )
    load(orders, by_update_day, "moved-day-1", [[order_row(1), order_row(2)]])
    # Day 2 holds order 1's newer version; its partition is day 2, so day 1's delete does not touch it.
    orders.execute(
        "UPDATE sales.orders SET updated_at = updated_at + interval '1 day', status = 'refunded' "
        "WHERE order_id = 1"
    )

    counts = load(orders, by_update_day, "moved-day-1-again", [[order_row(1), order_row(2)]])

    assert (counts.deleted, counts.inserted, counts.updated) == (1, 1, 0)
    assert orders.execute("SELECT order_id, status FROM sales.orders ORDER BY order_id").fetchall() == [
        (1, "refunded"),
        (2, "paid"),
    ]


def test_same_interval_loaded_twice_gives_the_identical_table(orders: psycopg.Connection) -> None:
    pages = [[order_row(i, amount=f"{i}.25") for i in range(1, 6)], [order_row(3, status="refunded")]]
    load(orders, ORDERS, "run-a", pages)
    once = orders_checksum(orders)
    again = load(orders, ORDERS, "run-b", pages)
    assert orders_checksum(orders) == once
    assert once[0] == 5
    assert (again.inserted, again.updated) == (0, 0)


def test_staging_is_unlogged_created_on_first_page_and_dropped_by_the_merge(
    orders: psycopg.Connection,
) -> None:
    staging = prepare_staging(orders, ORDERS, "lifecycle")
    assert staging_row_count(orders, staging) is None
    with orders.transaction():
        assert stage_rows(orders, staging, [order_row(1), order_row(2)]) == 2
    persistence = orders.execute(
        "SELECT relpersistence FROM pg_class WHERE oid = to_regclass(%s)", (staging.table,)
    ).fetchone()
    assert persistence == ("u",)
    with orders.transaction():
        stage_rows(orders, staging, [order_row(3)])
    assert staging_row_count(orders, staging) == 3
    with orders.transaction():
        merge_staging(orders, staging, DAY)
    assert staging_row_count(orders, staging) is None


def test_a_row_that_does_not_fit_the_columns_names_its_position_but_not_its_values(
    orders: psycopg.Connection,
) -> None:
    staging = prepare_staging(orders, ORDERS, "bad-row")
    bad = (3, 103, DAY[0], DAY[0], 1.5, "jane.doe@example.com")  # a float for a numeric column
    with (
        pytest.raises(ValueError, match=r"row 2 for sales\.orders does not fit columns") as raised,
        orders.transaction(),
    ):
        stage_rows(orders, staging, [order_row(1), bad])
    assert "value types: int, int, datetime, datetime, float, str" in str(raised.value)
    assert "jane.doe" not in str(raised.value)
    assert raised.value.__cause__ is None
    assert staging_row_count(orders, staging) is None


def test_merges_of_disjoint_intervals_do_not_wait_for_each_other(
    orders: psycopg.Connection, warehouse_conninfo: str
) -> None:
    first = prepare_staging(orders, ORDERS, "parallel-1")
    with orders.transaction():
        stage_rows(orders, first, [order_row(1), order_row(2)])
    with psycopg.connect(warehouse_conninfo, autocommit=True) as other:
        second = prepare_staging(other, ORDERS, "parallel-2")
        with other.transaction():
            stage_rows(other, second, [order_row(3), order_row(4)])
        with orders.transaction():
            merge_staging(orders, first, DAY)  # held open while the second merge runs
            with other.transaction():
                other.execute("SET LOCAL lock_timeout = '2s'")
                counts = merge_staging(other, second, DAY)
        assert counts.inserted == 2
    assert orders_checksum(orders)[0] == 4


def test_a_key_inserted_by_a_concurrent_merge_is_settled_by_on_conflict(
    orders: psycopg.Connection, warehouse_conninfo: str
) -> None:
    counts = merge_beside_a_rival_insert(
        orders,
        warehouse_conninfo,
        ORDERS,
        staged=[order_row(1), order_row(2, amount="2.00"), order_row(3)],
        rival_row=order_row(2, amount="9.99", status="rival"),
    )

    assert counts == MergeCounts(inserted=2, updated=1, deleted=0)
    assert orders.execute(
        "SELECT order_id, amount, status FROM sales.orders ORDER BY order_id"
    ).fetchall() == [
        (1, Decimal("10.00"), "paid"),
        (2, Decimal("2.00"), "paid"),
        (3, Decimal("10.00"), "paid"),
    ]


def test_on_conflict_keeps_a_newer_version_a_concurrent_merge_inserted(
    orders: psycopg.Connection, warehouse_conninfo: str
) -> None:
    counts = merge_beside_a_rival_insert(
        orders,
        warehouse_conninfo,
        VERSIONED,
        staged=[order_row(1), order_row(2, amount="2.00")],
        rival_row=order_row(2, amount="0.00", status="refunded", updated_days=1),
    )

    assert counts == MergeCounts(inserted=1, updated=0, deleted=0)
    assert orders.execute("SELECT order_id, status FROM sales.orders ORDER BY order_id").fetchall() == [
        (1, "paid"),
        (2, "refunded"),
    ]


def merge_beside_a_rival_insert(
    orders: psycopg.Connection, conninfo: str, target: TargetSpec, *, staged: list[tuple], rival_row: tuple
) -> MergeCounts:
    """Merge `staged` while another transaction inserts `rival_row` (a key the merge also inserts) and
    commits only once the merge's INSERT waits for it: the race ON CONFLICT settles."""
    staging = prepare_staging(orders, target, f"race-{target.version_column}")
    with orders.transaction():
        stage_rows(orders, staging, staged)
    outcome: dict[str, MergeCounts] = {}

    def merge() -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn, conn.transaction():
            outcome["counts"] = merge_staging(conn, staging, DAY)

    with psycopg.connect(conninfo) as rival:
        rival.execute("INSERT INTO sales.orders VALUES (%s, %s, %s, %s, %s, %s)", rival_row)
        merging = threading.Thread(target=merge)
        merging.start()
        # The merge's INSERT does not see the rival's uncommitted key and waits on its index entry.
        wait_until_an_insert_waits_for_a_lock(orders)
        rival.commit()
        merging.join(10)
    return outcome["counts"]


def wait_until_an_insert_waits_for_a_lock(conn: psycopg.Connection) -> None:
    deadline = time.monotonic() + 10
    while not conn.execute(
        "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND query LIKE %s)",
        ("%INSERT INTO%",),
    ).fetchone()[0]:
        assert time.monotonic() < deadline, "the merge never waited for the rival's row"
        time.sleep(0.05)


def test_target_spec_rejects_a_version_column_it_does_not_load() -> None:
    with pytest.raises(ValueError, match="version_column 'version' is not among columns"):
        dataclasses.replace(ORDERS, version_column="version")
    with pytest.raises(ValueError, match="version_column 'order_id' is part of the key"):
        dataclasses.replace(ORDERS, version_column="order_id")
