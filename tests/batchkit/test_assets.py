"""batchkit.assets: one Asset per warehouse table. That a sync DAG's merge outlets and its consumers
agree on it: tests/automations/test_sync_dags.py."""

from __future__ import annotations

import pytest

from batchkit.assets import table_asset


def test_a_table_asset_is_named_by_connection_schema_and_table() -> None:
    asset = table_asset("sales.orders")
    assert asset.name == "warehouse.sales.orders"
    assert asset.uri == "table://warehouse/sales/orders"
    assert table_asset("sales.orders", conn_id="dwh").uri == "table://dwh/sales/orders"


def test_a_table_asset_needs_a_valid_table_name() -> None:
    with pytest.raises(ValueError, match="table"):
        table_asset("sales.orders; drop table x")
