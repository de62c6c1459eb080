"""batchkit.assets: one Asset per warehouse table. That a sync DAG's merge outlets and its consumers
agree on it: tests/automations/test_sync_dags.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import batchkit
from batchkit.assets import table_asset

PLUGINS = Path(batchkit.__path__[0]).parent


def test_a_table_asset_is_named_by_connection_schema_and_table() -> None:
    asset = table_asset("sales.orders")
    assert asset.name == "warehouse.sales.orders"
    assert asset.uri == "x-table://warehouse/sales/orders"
    assert table_asset("sales.orders", conn_id="dwh").uri == "x-table://dwh/sales/orders"


def test_a_table_asset_needs_a_valid_table_name() -> None:
    with pytest.raises(ValueError, match="table"):
        table_asset("sales.orders; drop table x")


PROBE = """
import importlib.util, json, sys
from batchkit.assets import table_asset
table_asset("sales.orders")
print(json.dumps({"installed": importlib.util.find_spec("boto3") is not None, "imported": "boto3" in sys.modules}))
"""


def test_a_table_asset_does_not_load_the_providers_asset_handlers(tmp_path: Path) -> None:
    """A provider-known scheme would make Airflow load every provider's asset URI handlers, and the
    amazon provider's imports boto3: ~0.1 s in every dag-processor parse child and every task process."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(PLUGINS), "AIRFLOW_HOME": str(tmp_path)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"installed": True, "imported": False}
