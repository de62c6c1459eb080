"""Contracts (include/contracts) and the quarantine table, against the session's real warehouse.

A contract module is the one declaration of its sync's target (include/contracts/__init__.py): these
tests hold every contract to the naming convention, and apply every contract's DDL file to a scratch
database to compare the table it creates (columns, types, nullability, primary key) with the contract.
"""

from __future__ import annotations

import gc
import importlib
import pkgutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Annotated

import psycopg
import pytest
from pydantic import BaseModel, Field, ValidationError

from batchkit.checkpoints import RunIdentity
from batchkit.contracts import (
    Rejected,
    clear_quarantine,
    count_quarantined,
    ensure_quarantine,
    quarantine_records,
    validate_records,
)
from batchkit.intervals import DataInterval
from batchkit.load import TargetSpec
from batchkit.sql_files import resolve_sql_path
from batchkit.sync_spec import CONTRACTS_PACKAGE
from include import contracts as contracts_package
from include.contracts import Column, Money, NonNegativeMoney, SqlType, Text, Timestamp, target_columns
from include.contracts.customers import CONTRACT as CUSTOMERS
from include.contracts.customers import TARGET as CUSTOMERS_TARGET
from include.contracts.orders import CONTRACT as ORDERS
from include.contracts.orders import TARGET as ORDERS_TARGET
from tools.metadb import PgServer, drop_database, ensure_database

GOOD_ORDER = {
    "order_id": 1,
    "customer_id": 7,
    "order_ts": "2024-05-01T10:00:00Z",
    "updated_at": "2024-05-01T13:00:00+02:00",
    "amount": "12.50",
    "status": "paid",
}


def test_a_valid_record_becomes_a_row_in_target_column_order() -> None:
    page = validate_records(ORDERS, [{**GOOD_ORDER, "coupon": "SPRING"}], ORDERS_TARGET.columns)
    assert page.rejected == []
    assert page.rows == [
        (
            1,
            7,
            datetime(2024, 5, 1, 10, tzinfo=UTC),
            datetime(2024, 5, 1, 11, tzinfo=UTC),
            Decimal("12.50"),
            "paid",
        )
    ]
    assert ORDERS_TARGET.columns == ("order_id", "customer_id", "order_ts", "updated_at", "amount", "status")


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"order_id": "1"}, "order_id: Input should be a valid integer [type=int_type]"),
        ({"order_id": True}, "order_id: Input should be a valid integer [type=int_type]"),
        ({"order_id": 0}, "order_id: Input should be greater than or equal to 1"),
        ({"amount": "12.505"}, "amount: Input should be an amount with at most 10 digits before the decimal"),
        ({"amount": "NaN"}, "amount: Input should be an amount with at most 10 digits before the decimal"),
        ({"amount": "-0.01"}, "and 2 after, not negative, as a JSON number or string [type=money]"),
        ({"order_ts": "2024-05-01T10:00:00"}, "order_ts: Input should have timezone info"),
        ({"order_ts": 1714557600}, "order_ts: Input should be an ISO 8601 timestamp string with a timezone"),
        ({"status": "PAID"}, "status: String should match pattern"),
        ({"status": None}, "status: Input should be a valid string"),
        (
            {"updated_at": "2024-04-30T00:00:00Z"},
            "<record>: Value error, updated_at 2024-04-30T00:00:00+00:00",
        ),
    ],
)
def test_contract_violations_are_rejected_with_pydantic_error_text(change: dict, error: str) -> None:
    record = {**GOOD_ORDER, **change}
    page = validate_records(ORDERS, [record], ORDERS_TARGET.columns)
    assert page.rows == []
    assert page.rejected[0].payload == record
    assert page.rejected[0].error.startswith("1 validation error(s) for Order: ")
    assert error in page.rejected[0].error


class _FieldConstrainedAmounts(BaseModel):
    """What Money and NonNegativeMoney must be equivalent to: pydantic's own Decimal constraints."""

    any_sign: Annotated[Decimal, Field(max_digits=12, decimal_places=2)]
    non_negative: Annotated[Decimal, Field(max_digits=12, decimal_places=2, ge=0)]


class _ContractAmounts(BaseModel):
    any_sign: Money
    non_negative: NonNegativeMoney


@pytest.mark.parametrize(
    "amount",
    ["12.50", "12.5", "12", "0", "-0", "-0.00", "-12.50", "9999999999.99", "00000000012.50", "12.500",
     "1e3", "1E+3", " 12", "+12", "12.", ".5", 12.5, 12, -3, 10**10 - 1,
     # rejected by both
     "12.505", "12345678901.00", "NaN", "Infinity", "", "1_000", "twelve", 12.505, 10**10, True, None],
)  # fmt: skip
@pytest.mark.parametrize("field", ["any_sign", "non_negative"])
def test_money_accepts_and_rejects_exactly_what_decimal_field_constraints_do(
    field: str, amount: object
) -> None:
    def outcome(model: type[BaseModel]) -> tuple[str, object]:
        try:
            value = getattr(
                model.model_validate({"any_sign": "1", "non_negative": "1", field: amount}), field
            )
        except ValidationError as exc:
            return "rejected", [error["loc"] for error in exc.errors()]
        return "accepted", (value, str(value))

    assert outcome(_ContractAmounts) == outcome(_FieldConstrainedAmounts)


def test_missing_fields_and_non_objects_are_rejected_at_their_index() -> None:
    page = validate_records(
        ORDERS, [GOOD_ORDER, {"order_id": 2}, "garbage", [1, 2], None], ORDERS_TARGET.columns
    )
    assert len(page.rows) == 1
    assert [reject.index for reject in page.rejected] == [1, 2, 3, 4]
    assert "status: Field required [type=missing]" in page.rejected[0].error
    assert "<record>: Input should be a valid dictionary or instance of Order" in page.rejected[1].error


def test_customers_contract() -> None:
    good = {
        "customer_id": 7,
        "email": "ada@example.com",
        "name": "Ada L.",
        "country": "GB",
        "updated_at": "2024-05-01T00:00:00Z",
    }
    bad = [{**good, "email": "no-at-sign"}, {**good, "name": "Ada\x00"}, {**good, "country": "gb"}]
    page = validate_records(CUSTOMERS, [good, *bad], CUSTOMERS_TARGET.columns)
    assert [row[0] for row in page.rows] == [7]
    assert [reject.error.split(": ")[1] for reject in page.rejected] == ["email", "name", "country"]


def test_a_target_column_the_contract_lacks_is_a_clear_error() -> None:
    with pytest.raises(
        ValueError, match=r"contract include\.contracts\.orders\.Order has no field\(s\) \['discount'\]"
    ):
        validate_records(ORDERS, [GOOD_ORDER], (*ORDERS_TARGET.columns, "discount"))


def test_row_rule_rejects_valid_rows_with_its_reason() -> None:
    page = validate_records(
        ORDERS,
        [GOOD_ORDER, {**GOOD_ORDER, "order_id": 2}],
        ORDERS_TARGET.columns,
        row_rule=lambda row: "odd order" if row[0] % 2 else None,
    )
    assert [row[0] for row in page.rows] == [2]
    assert page.rejected == [Rejected(0, GOOD_ORDER, "odd order")]


def test_a_page_with_invalid_records_gives_the_rows_an_all_valid_page_gives() -> None:
    """Valid pages take a fast path and pages with rejects another; rows and reject order agree."""
    orders = [{**GOOD_ORDER, "order_id": order_id} for order_id in range(1, 7)]
    broken = {**orders[1], "amount": "1.001"}
    all_valid = validate_records(ORDERS, orders, ORDERS_TARGET.columns)
    mixed = validate_records(
        ORDERS,
        [orders[0], broken, *orders[2:]],
        ORDERS_TARGET.columns,
        row_rule=lambda row: "order 3 is held back" if row[0] == 3 else None,
    )
    assert all_valid.rejected == []
    assert [row[0] for row in all_valid.rows] == [1, 2, 3, 4, 5, 6]
    assert mixed.rows == [row for row in all_valid.rows if row[0] not in (2, 3)]
    assert [(reject.index, reject.payload) for reject in mixed.rejected] == [(1, broken), (2, orders[2])]
    assert "amount: Input should be an amount with at most 10 digits" in mixed.rejected[0].error
    assert mixed.rejected[1].error == "order 3 is held back"


def test_quarantine_keeps_objects_as_jsonb_and_anything_else_as_text(warehouse: psycopg.Connection) -> None:
    ensure_quarantine(warehouse)
    start = datetime(2024, 5, 1, tzinfo=UTC)
    identity = RunIdentity(
        f"dag_{uuid.uuid4().hex[:8]}", "load", "run-1", DataInterval(start, start + timedelta(days=1))
    )
    rejected = [
        Rejected(0, {"order_id": "x", "note": "ünïcode"}, "e0"),
        Rejected(1, "garbage", "e1"),
        Rejected(2, {"amount": float("nan")}, "e2"),
        Rejected(3, {"status": "pa\x00id"}, "e3 \x00"),
        Rejected(4, [1, 2], "e4"),
    ]
    with warehouse.transaction():
        assert quarantine_records(warehouse, identity, "orders", 3, rejected) == 5

    stored = warehouse.execute(
        "SELECT record_index, page_number, source, payload, payload_text, error FROM batch_meta.quarantine "
        "WHERE dag_id = %s ORDER BY record_index",
        (identity.dag_id,),
    ).fetchall()
    assert stored == [
        (0, 3, "orders", {"order_id": "x", "note": "ünïcode"}, None, "e0"),
        (1, 3, "orders", None, '"garbage"', "e1"),
        (2, 3, "orders", None, '{"amount": NaN}', "e2"),
        (3, 3, "orders", None, '{"status": "pa\\u0000id"}', "e3 \\x00"),
        (4, 3, "orders", None, "[1, 2]", "e4"),
    ]
    assert count_quarantined(warehouse, identity) == 5
    other_sync = RunIdentity(identity.dag_id, "other_sync", "run-1", identity.interval)
    assert clear_quarantine(warehouse, other_sync) == 0
    assert clear_quarantine(warehouse, identity) == 5
    assert count_quarantined(warehouse, identity) == 0


def test_validation_leaves_the_garbage_collector_as_it_found_it() -> None:
    """validate_records pauses the cyclic collector for speed; it must always restore it."""
    good = {"customer_id": 7, "name": "Ada", "email": "a@example.com", "country": "GB"}
    records = [{**good, "updated_at": "2024-05-01T00:00:00Z"}, {"customer_id": "7"}]

    def exploding_rule(row: tuple) -> str | None:
        raise RuntimeError("a row rule that fails")

    assert gc.isenabled()
    page = validate_records(CUSTOMERS, records, CUSTOMERS_TARGET.columns)
    assert (len(page.rows), len(page.rejected), gc.isenabled()) == (1, 1, True)
    with pytest.raises(RuntimeError, match="row rule"):
        validate_records(CUSTOMERS, records, CUSTOMERS_TARGET.columns, row_rule=exploding_rule)
    assert gc.isenabled()

    gc.disable()
    try:
        validate_records(CUSTOMERS, records, CUSTOMERS_TARGET.columns)
        assert not gc.isenabled(), "a collector the caller disabled must stay disabled"
    finally:
        gc.enable()


# --- One definition per target: the contract declares it, the DDL file must create exactly that. ---

CONTRACT_NAMES = sorted(module.name for module in pkgutil.iter_modules(contracts_package.__path__))


def contract(name: str) -> ModuleType:
    return importlib.import_module(f"{CONTRACTS_PACKAGE}.{name}")


def test_the_repo_has_contracts() -> None:
    assert {"orders", "customers"} <= set(CONTRACT_NAMES)


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_a_contract_is_named_after_its_records_and_declares_its_whole_target(name: str) -> None:
    module = contract(name)
    target: TargetSpec = module.TARGET
    schema, table = target.table.split(".")

    # include/contracts/<table>.py: the records' name is the table's; the DDL is <schema>_<table>.sql.
    assert name == table, f"include/contracts/{name}.py declares table {target.table}: name it {table}.py"
    assert module.CONTRACT.source == name
    assert target.ddl == f"sql/targets/{schema}_{table}.sql"
    assert target.columns == tuple(module.CONTRACT.model.model_fields)
    assert resolve_sql_path(target.ddl).is_file(), f"{target.ddl} (named by include/contracts/{name}.py)"


@pytest.fixture(scope="module")
def scratch(pg_server: PgServer) -> Iterator[psycopg.Connection]:
    """An empty throwaway database, where each DDL file creates its table from nothing."""
    name = f"bk_test_ddl_{uuid.uuid4().hex[:12]}"
    ensure_database(pg_server, name)
    try:
        with psycopg.connect(pg_server.conninfo(name), autocommit=True) as conn:
            yield conn
    finally:
        drop_database(pg_server, name)


def table_as_created(conn: psycopg.Connection, table: str) -> tuple[tuple[Column, ...], tuple[str, ...]]:
    """The table's columns (format_type's spelling, nullability) and primary key, from the catalog."""
    columns = conn.execute(
        """
        SELECT attname, format_type(atttypid, atttypmod), NOT attnotnull
          FROM pg_attribute
         WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped
         ORDER BY attnum
        """,
        (table,),
    ).fetchall()
    key = conn.execute(
        """
        SELECT coalesce(array_agg(a.attname ORDER BY k.position), '{}')
          FROM pg_index i
         CROSS JOIN unnest(i.indkey) WITH ORDINALITY AS k(attnum, position)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = %s::regclass AND i.indisprimary
        """,
        (table,),
    ).fetchone()[0]
    return tuple(Column(*row) for row in columns), tuple(key)


def ddl_mismatches(conn: psycopg.Connection, target: TargetSpec, model: type[BaseModel]) -> list[str]:
    """Apply `target.ddl` to `conn`'s (scratch) database; every way the table differs from the contract."""
    where = f"include/{target.ddl} vs contract {model.__module__}"
    conn.execute(resolve_sql_path(target.ddl).read_text(encoding="utf-8"))
    if conn.execute("SELECT to_regclass(%s)", (target.table,)).fetchone()[0] is None:
        return [f"{where}: the DDL does not create table {target.table}"]
    created, key = table_as_created(conn, target.table)
    expected = {column.name: column for column in target_columns(model)}
    actual = {column.name: column for column in created}
    problems = [f"{where}: column {name} is missing" for name in expected if name not in actual]
    problems += [f"{where}: column {name} is not in the contract" for name in actual if name not in expected]
    for name in expected.keys() & actual.keys():
        want, got = expected[name], actual[name]
        if want.sql_type != got.sql_type:
            problems.append(f"{where}: column {name} type: expected {want.sql_type}, actual {got.sql_type}")
        if want.nullable != got.nullable:
            problems.append(
                f"{where}: column {name}: expected {'NULL' if want.nullable else 'NOT NULL'}, "
                f"actual {'NULL' if got.nullable else 'NOT NULL'}"
            )
    if [name for name in target.columns if name in actual] != [c.name for c in created if c.name in expected]:
        problems.append(
            f"{where}: column order: expected {list(target.columns)}, actual {[c.name for c in created]}"
        )
    if key != target.key:
        problems.append(f"{where}: primary key: expected {list(target.key)}, actual {list(key)}")
    return sorted(problems)


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_the_ddl_creates_exactly_the_table_its_contract_declares(
    name: str, scratch: psycopg.Connection
) -> None:
    module = contract(name)

    assert ddl_mismatches(scratch, module.TARGET, module.CONTRACT.model) == []


class _Drifted(BaseModel):
    widget_id: Annotated[int, SqlType("bigint")]
    price: Money
    label: Text | None
    seen_at: Timestamp
    note: str


def test_a_ddl_that_drifts_from_its_contract_is_named_column_by_column(
    scratch: psycopg.Connection, tmp_path: Path
) -> None:
    ddl = tmp_path / "drift_widgets.sql"
    ddl.write_text(
        """
        CREATE SCHEMA IF NOT EXISTS drift;
        CREATE TABLE IF NOT EXISTS drift.widgets (
            widget_id  bigint,
            price      numeric(10,2) NOT NULL,
            label      text          NOT NULL,
            seen_at    timestamp     NOT NULL,
            extra      text,
            PRIMARY KEY (widget_id, price)
        );
        """,
        encoding="utf-8",
    )
    target = TargetSpec(
        table="drift.widgets", ddl=str(ddl), columns=tuple(_Drifted.model_fields), key=("widget_id",)
    )

    where = f"include/{ddl} vs contract {__name__}"
    assert ddl_mismatches(scratch, target, _Drifted) == sorted(
        [
            f"{where}: column price type: expected numeric(12,2), actual numeric(10,2)",
            f"{where}: column label: expected NULL, actual NOT NULL",
            f"{where}: column seen_at type: expected timestamp with time zone, actual timestamp without time zone",
            f"{where}: column note is missing",
            f"{where}: column extra is not in the contract",
            f"{where}: primary key: expected ['widget_id'], actual ['widget_id', 'price']",
        ]
    )


def test_target_columns_derives_type_and_nullability_from_each_field() -> None:
    assert target_columns(_Drifted) == (
        Column("widget_id", "bigint", False),
        Column("price", "numeric(12,2)", False),
        Column("label", "text", True),
        Column("seen_at", "timestamp with time zone", False),
        Column("note", "text", False),
    )
    assert target_columns(ORDERS.model)[4] == Column("amount", "numeric(12,2)", False)


def test_a_field_without_a_postgres_type_is_named() -> None:
    class Odd(BaseModel):
        tags: list[str]

    with pytest.raises(TypeError, match=r"Odd\.tags: no Postgres type for list\[str\]; annotate it with"):
        target_columns(Odd)
