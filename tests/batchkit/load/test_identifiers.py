"""batchkit.load.identifiers: which names pass as SQL identifiers, and how they are quoted."""

from __future__ import annotations

import psycopg
import pytest

from batchkit.load.identifiers import checked_identifier


@pytest.mark.parametrize(
    "value",
    ["orders; drop table x", "Orders", "sales.orders.extra", "1orders", "", "a" * 64, "sales.", 'x"y', 42],
)
def test_checked_identifier_rejects_unsafe_names(value: object) -> None:
    with pytest.raises(ValueError, match=r"^target\.table: ") as raised:
        checked_identifier(value, "target.table")
    assert repr(value) in str(raised.value)


def test_checked_identifier_quotes_qualified_and_plain_names(warehouse: psycopg.Connection) -> None:
    assert checked_identifier("sales.orders", "t").as_string(warehouse) == '"sales"."orders"'
    assert checked_identifier("_x9", "c", allow_schema=False).as_string(warehouse) == '"_x9"'
    with pytest.raises(ValueError, match="column: 'sales.orders' is not a valid name;"):
        checked_identifier("sales.orders", "column", allow_schema=False)
