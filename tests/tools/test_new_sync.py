"""tools.new_sync: a scaffolded sync passes the CI checks as generated, and bad input writes nothing.

The scaffold runs into a throwaway copy of the repository (never into this one). The checks then run in
subprocesses rooted in that copy, so `include.contracts`, `batchkit` and `bench` resolve to the copy and
the generated files are parsed, policed and tested exactly as CI would parse, police and test them here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import yaml

from tools.demo_upstream import FIELDS
from tools.metadb import REPO_ROOT
from tools.new_sync import DEMO_RESOURCES, EXIT_OK, EXIT_REFUSED, Scaffold, main, plan

COPIED_DIRS = ("dags", "include", "plugins", "config", "bench", "tools", "tests/automations")
COPIED_FILES = (
    "pyproject.toml",
    "tests/__init__.py",
    "tests/conftest.py",
    "tests/dagrun.py",
    "tests/upstream.py",
)
RUFF = Path(sys.executable).with_name("ruff")
CRM_SYNC_TAGS = ["domain:crm", "kind:sync", "tier:3"]
# (NAME, options, target table): one sync per demo resource, the second with its domain inferred.
GENERATED = (
    ("sales_widgets_sync", [], "sales.widgets"),
    ("crm_leads_sync", ["--resource", "customers", "--owner", "crm-growth"], "crm.leads"),
)
# Runs inside the copy: parses each generated DAG file with a DagBag (cluster policy applied), applies
# batchkit.policy, runs the parse-time probe, and validates one demo API page with the generated contract.
INTEGRITY_CHECK = """
import json, os, sys
from datetime import UTC, datetime
from pathlib import Path
from airflow.dag_processing.dagbag import DagBag
from batchkit.policy import dag_problems, task_problems
from batchkit.sync_spec import load_spec, spec_path
from bench.parse_time import probe
from tools.demo_upstream import Volumes, select

report = {}
for path in map(Path, sys.argv[1:]):
    bag = DagBag(dag_folder=path)
    problems = [p for dag in bag.dags.values() for p in dag_problems(dag)]
    problems += [f"{t.task_id}: {p}" for dag in bag.dags.values() for t in dag.tasks for p in task_problems(t)]
    spec = load_spec(spec_path(path.stem))
    resource = spec.source.endpoint.rsplit("/", 1)[-1]
    day = select(resource, datetime(2026, 5, 1, tzinfo=UTC), datetime(2026, 5, 2, tzinfo=UTC), Volumes(50, 50))
    model = spec.record_contract().model
    report[path.stem] = {
        "dag_ids": sorted(bag.dags),
        "import_errors": bag.import_errors,
        "problems": problems,
        "probe": probe(path, dict(os.environ)),
        "demo_records": day.total,
        "valid_demo_records": len([model.model_validate(r) for r in day.records(0, day.total)]),
    }
print(json.dumps(report))
"""


def repo_copy(root: Path) -> Path:
    """The parts of this repository a sync touches and the test suite needs, copied under `root`."""
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in COPIED_DIRS:
        if (REPO_ROOT / folder).is_dir():
            shutil.copytree(REPO_ROOT / folder, root / folder, ignore=ignore)
    for file in COPIED_FILES:
        (root / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / file, root / file)
    return root


def env_rooted_in(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(p) for p in (root / "plugins", root / "config", root)),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
        "BATCHKIT_INCLUDE_DIR": str(root / "include"),
    }


def run_in(root: Path, *command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        cwd=root,
        env=env_rooted_in(root),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_a_scaffolded_sync_passes_the_ci_checks_as_generated(tmp_path: Path) -> None:
    root = repo_copy(tmp_path / "repo")
    written: list[Path] = []
    for name, options, _ in GENERATED:
        assert main([name, *options, "--root", str(root)]) == EXIT_OK
        written += [root / path for path in plan_for(name, options).files()]
    assert all(path.is_file() for path in written)
    assert not list(REPO_ROOT.glob("dags/*/sales_widgets_sync.py")), "the scaffold wrote into the real repo"

    dag_files = [root / "dags/sales/sales_widgets_sync.py", root / "dags/crm/crm_leads_sync.py"]
    checked = run_in(root, sys.executable, "-c", INTEGRITY_CHECK, *dag_files)
    assert checked.returncode == 0, checked.stderr[-4000:]
    report = json.loads(checked.stdout.strip().splitlines()[-1])
    for name, _, _ in GENERATED:
        result = report[name]
        assert result["dag_ids"] == [name], result["import_errors"]
        assert result["problems"] == []
        assert not result["probe"]["import_errors"], result["probe"]["import_errors"]
        assert result["probe"]["io_events"] == []
        assert result["demo_records"] == 50
        assert result["valid_demo_records"] == 50

    python_files = [path for path in written if path.suffix == ".py"]
    lint = run_in(root, RUFF, "check", "--no-cache", *python_files)
    assert lint.returncode == 0, lint.stdout
    formatting = run_in(root, RUFF, "format", "--check", "--no-cache", *python_files)
    assert formatting.returncode == 0, formatting.stdout

    stub_tests = [path for path in written if path.name.startswith("test_")]
    stubs = run_in(root, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *stub_tests)
    assert stubs.returncode == 0, stubs.stdout[-4000:] + stubs.stderr[-2000:]
    assert "6 passed" in stubs.stdout.splitlines()[-1], stubs.stdout[-2000:]


def plan_for(name: str, options: list[str]) -> Scaffold:
    values = dict(zip(options[::2], options[1::2], strict=True))
    return plan(
        name,
        domain=values.get("--domain"),
        owner=values.get("--owner"),
        resource=values.get("--resource", "orders"),
        start_date=date(2026, 1, 1),
    )


def test_generated_files_are_named_and_filled_from_the_options() -> None:
    scaffold = plan_for("crm_leads_sync", ["--resource", "customers", "--owner", "crm-growth"])
    files = {str(path): text for path, text in scaffold.files().items()}

    assert sorted(files) == [
        "dags/crm/crm_leads_sync.py",
        "include/automations/crm_leads_sync.yaml",
        "include/contracts/crm_leads_sync.py",
        "include/sql/targets/crm_leads.sql",
        "tests/automations/test_crm_leads_sync_spec.py",
    ]
    assert files["dags/crm/crm_leads_sync.py"] == (REPO_ROOT / "dags/sales/sales_orders_sync.py").read_text()
    spec = yaml.safe_load(files["include/automations/crm_leads_sync.yaml"])
    assert (spec["dag_id"], spec["owner"], spec["tags"]) == ("crm_leads_sync", "crm-growth", CRM_SYNC_TAGS)
    assert spec["source"]["endpoint"] == "/v1/customers"
    assert (spec["target"]["table"], spec["target"]["key"]) == ("crm.leads", ["customer_id"])
    assert spec["schedule"]["start_date"] == date(2026, 1, 1)
    assert "CREATE TABLE IF NOT EXISTS crm.leads (" in files["include/sql/targets/crm_leads.sql"]
    assert "TODO" not in "".join(files.values())


def test_every_demo_resource_is_scaffolded_with_the_fields_the_demo_api_sends() -> None:
    assert sorted(DEMO_RESOURCES) == sorted(FIELDS)
    for resource, demo in DEMO_RESOURCES.items():
        assert sorted(column.name for column in demo.columns) == sorted(name for name, _ in FIELDS[resource])


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["Sales_orders"], "not a valid dag_id"),
        (["sales-orders-sync"], "not a valid dag_id"),
        (["ab"], "not a valid dag_id"),
        (["for"], "not a valid dag_id"),
        (["widgets_sync"], "does not start with a taxonomy domain"),
        (["sales_widgets_sync", "--domain", "marketing"], "not a taxonomy domain"),
        (["sales_widgets_sync", "--resource", "invoices"], "not a demo API resource"),
        (["sales_widgets_sync", "--owner", "Sales Team"], "must be a team handle"),
        (["sales_widgets_sync", "--owner", "airflow"], "owner: Value error, owner must name a team"),
        (["sales_9x_sync"], "gives the table name '9x'"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(
    argv: list[str], complaint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--root", str(tmp_path)]) == EXIT_REFUSED

    assert complaint in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_existing_files_are_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sales_widgets_sync", "--root", str(tmp_path)]) == EXIT_OK
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}

    assert main(["sales_widgets_sync", "--root", str(tmp_path)]) == EXIT_REFUSED
    assert "refusing to overwrite existing file(s): include/automations/sales_widgets_sync.yaml" in (
        capsys.readouterr().err
    )
    # The same dag_id in another domain would be a second DAG with that id.
    assert main(["sales_widgets_sync", "--domain", "crm", "--root", str(tmp_path)]) == EXIT_REFUSED
    assert "dags/sales/sales_widgets_sync.py" in capsys.readouterr().err

    after = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    assert after == before
