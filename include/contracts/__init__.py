"""Record contracts: one pydantic model per source, and the warehouse table its rows load into.

Shared choices for every source:

- Extra fields are IGNORED, not forbidden. APIs add fields without notice and call it a compatible
  change; forbidding them would quarantine every record on the day a field appears and trip the
  quarantine threshold for data the target does not even store. What the target needs — present,
  typed, in range — is what a contract checks.
- Strict where JSON has the type, lax where it cannot: ids are JSON integers (the string "12", a float
  or a boolean is rejected), text is a JSON string, money is an exact Decimal from a JSON number or a
  numeric string ("12.50"), timestamps are ISO 8601 strings WITH a timezone (a bare epoch number is
  rejected: seconds or milliseconds is a guess, and naive times are a guess about the zone).
- Text cannot hold NUL characters (Postgres text rejects them), so a record carrying one is rejected
  here with a clear error instead of failing the COPY of its whole page.

A contract module (include/contracts/<name>.py, named after the records it describes, which is also the
target table's name: orders.py loads sales.orders) is the one declaration of its sync's target: CONTRACT
holds the model, TARGET the table, its columns (the model's fields, in order), its key and its DDL file
(include/sql/targets/<schema>_<table>.sql). Each column's Postgres type and nullability follow from the
field (`target_columns`): the shared types below carry theirs (`SqlType`), other fields map from their
Python type. The sync YAML names the contract and may restate the table and key, which must then match;
tests/batchkit/test_contracts.py applies every DDL file to a scratch database and fails, naming the file
and column, where it differs from its contract.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetPydanticSchema,
    Strict,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import core_schema


def _timestamp_schema() -> core_schema.CoreSchema:
    """An ISO 8601 string with a timezone, parsed by the stdlib's C parser rather than pydantic's.

    Both parsers accept the ISO 8601 forms, but pydantic's attaches its own TzInfo class, and psycopg's
    binary COPY dumps such a datetime ~4x slower than one carrying the stdlib's `timezone` (~1 s per
    million rows of two timestamps: see the dump step of bench/contract_cost.py). pydantic-core calls
    the C function directly, without a Python frame per value.
    """
    iso_text = core_schema.custom_error_schema(
        core_schema.chain_schema(
            [
                core_schema.str_schema(strict=True),
                core_schema.no_info_plain_validator_function(datetime.fromisoformat),
            ]
        ),
        custom_error_type="timestamp",
        custom_error_message="Input should be an ISO 8601 timestamp string with a timezone, e.g. 2024-05-01T12:00:00Z",
    )
    return core_schema.chain_schema([iso_text, core_schema.datetime_schema(tz_constraint="aware")])


def money(*, whole_digits: int = 10, decimal_places: int = 2, non_negative: bool = False) -> Any:
    """An exact amount (Decimal) for a numeric(whole_digits + decimal_places, decimal_places) column.

    Accepts what Annotated[Decimal, Field(max_digits=..., decimal_places=..., ge=...)] accepts, a JSON
    number or a numeric string, with the same values. Plain numeric strings, the usual form of money in
    an API, take a fast path: a pattern checked inside pydantic-core, then the Decimal. Anything else
    (a number, "1E+3", "12.500") goes through Decimal's own digit checks, which pydantic makes by
    calling back into Python for every value; the fast path costs ~40% less per amount (the validate
    step of bench/contract_cost.py shows the whole contract). A failure says in one sentence what an
    amount must look like.
    """
    sign = "" if non_negative else "-?"
    plain = rf"^{sign}[0-9]{{1,{whole_digits}}}(\.[0-9]{{1,{decimal_places}}})?$"
    schema = core_schema.union_schema(
        [
            core_schema.chain_schema(
                [core_schema.str_schema(strict=True, pattern=plain), core_schema.decimal_schema()]
            ),
            core_schema.decimal_schema(
                max_digits=whole_digits + decimal_places,
                decimal_places=decimal_places,
                ge=Decimal(0) if non_negative else None,
                allow_inf_nan=False,
            ),
        ],
        mode="left_to_right",
        custom_error_type="money",
        custom_error_message=(
            f"Input should be an amount with at most {whole_digits} digits before the decimal point and "
            f"{decimal_places} after{', not negative' if non_negative else ''}, as a JSON number or string"
        ),
    )
    return Annotated[
        Decimal,
        GetPydanticSchema(lambda _source, _handler: schema),
        SqlType(f"numeric({whole_digits + decimal_places},{decimal_places})"),
    ]


@dataclass(frozen=True)
class SqlType:
    """The Postgres column type of a contract field, as `format_type` spells it ("numeric(12,2)").

    Annotated metadata: pydantic ignores it; `target_columns` reads it. Fields without one get the type
    of their Python type (PYTHON_SQL_TYPES).
    """

    name: str


# The column type of a field without an SqlType, by its Python type.
PYTHON_SQL_TYPES: dict[type, str] = {
    bool: "boolean",
    int: "bigint",
    float: "double precision",
    str: "text",
    Decimal: "numeric",
    datetime: "timestamp with time zone",
    date: "date",
}


@dataclass(frozen=True)
class Column:
    """A target column as its contract field declares it."""

    name: str
    sql_type: str
    nullable: bool


def target_columns(model: type[BaseModel]) -> tuple[Column, ...]:
    """The target table's columns as `model` declares them: name, Postgres type, nullability, in order.

    A field is nullable when it accepts None (`X | None`); its type is its SqlType if it has one, else
    that of its Python type. A field of any other type raises TypeError naming it: give it an SqlType.
    """
    columns = []
    for name, field in model.model_fields.items():
        annotation, nullable = field.annotation, False
        if get_origin(annotation) in (Union, types.UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            nullable = len(members) < len(get_args(annotation))
            annotation = members[0] if len(members) == 1 else annotation
        metadata = list(field.metadata)
        while get_origin(annotation) is Annotated:
            annotation, *extra = get_args(annotation)
            metadata.extend(extra)
        declared = [item.name for item in metadata if isinstance(item, SqlType)]
        if declared:
            sql_type = declared[-1]
        elif isinstance(annotation, type) and annotation in PYTHON_SQL_TYPES:
            sql_type = PYTHON_SQL_TYPES[annotation]
        else:
            raise TypeError(
                f"{model.__module__}.{model.__name__}.{name}: no Postgres type for {annotation!r}; "
                "annotate it with include.contracts.SqlType"
            )
        columns.append(Column(name, sql_type, nullable))
    return tuple(columns)


class SourceRecord(BaseModel):
    """Base of every contract model: unknown fields ignored, validated records immutable."""

    model_config = ConfigDict(extra="ignore", frozen=True)


RecordId = Annotated[int, Strict(), Field(ge=1, le=2**63 - 1), SqlType("bigint")]
Text = Annotated[
    str, Strict(), StringConstraints(min_length=1, max_length=1000, pattern=r"^[^\x00]*$"), SqlType("text")
]
Money = money()
NonNegativeMoney = money(non_negative=True)
Timestamp = Annotated[
    datetime,
    GetPydanticSchema(lambda _source, _handler: _timestamp_schema()),
    WithJsonSchema({"type": "string", "format": "date-time"}),
    SqlType("timestamp with time zone"),
]
