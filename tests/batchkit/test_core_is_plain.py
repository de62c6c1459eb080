"""The sync core is plain Python: importing it loads no Airflow module.

The core raises its own failure kinds (batchkit.errors) and the operators (batchkit.operators.sync)
decide what Airflow does about them, so the core runs, and is tested and benchmarked, without Airflow.
Each module is imported in a fresh interpreter: in this one Airflow is long loaded by other tests.

Not listed, because they are the Airflow side by design: batchkit.operators.*, batchkit.hooks.*
(Airflow hook base classes), dag_factory, sync_dag, alerts, alert_channels, policy and airflow_fixes.
batchkit.observability is listed: it imports Airflow's stats backend only when a metric is sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import batchkit

# Where batchkit is imported from here, so the fresh interpreter finds the same package.
PLUGINS = Path(batchkit.__path__[0]).parent

CORE_MODULES = [
    "batchkit.sync",
    "batchkit.checkpoints",
    "batchkit.pages",
    "batchkit.progress",
    "batchkit.contracts",
    "batchkit.intervals",
    "batchkit.ledger",
    "batchkit.errors",
    "batchkit.observability",
    "batchkit.extract",
    "batchkit.extract.pagination",
    "batchkit.extract.ratelimit",
    "batchkit.extract.retry",
    "batchkit.load",
    "batchkit.load.identifiers",
    "batchkit.load.postgres",
]

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(name for name in sys.modules if name == "airflow" or name.startswith("airflow."))))
"""


@pytest.mark.parametrize("module", CORE_MODULES)
def test_importing_a_core_module_loads_no_airflow(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, module],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(PLUGINS)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [], f"{module} imported Airflow"
