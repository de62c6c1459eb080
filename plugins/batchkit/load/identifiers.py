"""Table and column names from configuration, checked before they get anywhere near SQL.

Names are never interpolated as text: a checked name becomes a psycopg `sql.Identifier`, which quotes
it. The pattern is deliberately stricter than Postgres (lower case, no quoting needed), so a name in a
config file is the name in the catalog and `orders; drop table x` never reaches the server at all.
"""

from __future__ import annotations

import re

from psycopg import sql

IDENTIFIER_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def identifier_parts(value: str, field: str, *, allow_schema: bool = True) -> tuple[str, ...]:
    """The checked parts of `value`: ("name",) or, when `allow_schema`, ("schema", "name")."""
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected an identifier string, got {type(value).__name__} {value!r}")
    parts = tuple(value.split(".")) if allow_schema else (value,)
    if len(parts) > 2 or not all(IDENTIFIER_PATTERN.fullmatch(part) for part in parts):
        shape = "name or schema.name" if allow_schema else "name"
        raise ValueError(
            f"{field}: {value!r} is not a valid {shape}; each part must match {IDENTIFIER_PATTERN.pattern}"
        )
    return parts


def checked_identifier(value: str, field: str, *, allow_schema: bool = True) -> sql.Identifier:
    """`value` as a quoted SQL identifier ("schema"."name" when qualified), or ValueError naming `field`."""
    return sql.Identifier(*identifier_parts(value, field, allow_schema=allow_schema))


def checked_columns(values: tuple[str, ...], field: str) -> sql.Composed:
    """A comma-separated list of checked, unqualified column identifiers."""
    return sql.SQL(", ").join(
        checked_identifier(value, f"{field}[{index}]", allow_schema=False)
        for index, value in enumerate(values)
    )
