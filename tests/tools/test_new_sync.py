"""tools.new_sync: a scaffolded sync passes the CI checks as generated, and bad input writes nothing.

The scaffold runs into a throwaway copy of the repository (never into this one). The checks then run in
subprocesses rooted in that copy, so `include.contracts`, `batchkit` and `bench` resolve to the copy and
the generated files are parsed, policed and tested exactly as CI would parse, police and test them here,
and the DAG catalog the scaffold regenerated in the copy is what `make catalog` would write there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from pydantic import create_model

import include.contracts
from batchkit.sync_spec import contract_module
from include.contracts import target_columns
from tools.demo_upstream import FIELDS
from tools.metadb import REPO_ROOT
from tools.new_sync import (
    DEMO_RESOURCES,
    EXIT_CATALOG_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    SCAFFOLD_TYPES,
    SYNC_TASKS,
    Scaffold,
    default_start_date,
    demo_resource,
    main,
    plan,
)

COPIED_DIRS = ("dags", "include", "plugins", "config", "bench", "tools", "tests/automations")
COPIED_FILES = (
    "pyproject.toml",
    "docs/dags.md",
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
# batchkit.policy, runs the parse-time probe, validates one demo API page with the generated contract,
# and works out what `airflow dags test` (dag.test) would run for the DATE the scaffold printed: the data
# interval it infers, and the tasks that get a task instance (none whose start_date is after the date).
INTEGRITY_CHECK = """
import json, os, sys
from datetime import UTC, datetime
from pathlib import Path
from airflow.serialization.encoders import coerce_to_core_timetable
from airflow.dag_processing.dagbag import DagBag
from batchkit.policy import dag_problems, task_problems
from batchkit.sync_spec import load_spec, spec_path
from bench.parse_time import probe
from tools.demo_upstream import Volumes, select

dates = json.loads(sys.argv[1])
report = {}
for path in map(Path, sys.argv[2:]):
    bag = DagBag(dag_folder=path)
    problems = [p for dag in bag.dags.values() for p in dag_problems(dag)]
    problems += [f"{t.task_id}: {p}" for dag in bag.dags.values() for t in dag.tasks for p in task_problems(t)]
    spec = load_spec(spec_path(path.stem))
    resource = spec.source.endpoint.rsplit("/", 1)[-1]
    day = select(resource, datetime(2026, 5, 1, tzinfo=UTC), datetime(2026, 5, 2, tzinfo=UTC), Volumes(50, 50))
    model = spec.record_contract().model
    dag = bag.dags[path.stem]
    logical_date = datetime.fromisoformat(dates[path.stem])
    interval = coerce_to_core_timetable(dag.timetable).infer_manual_data_interval(run_after=logical_date)
    report[path.stem] = {
        "dag_test_interval": [interval.start.isoformat(), interval.end.isoformat()],
        "dag_test_tasks": sorted(t.task_id for t in dag.tasks if t.start_date is None or t.start_date <= logical_date),
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
def test_a_scaffolded_sync_passes_the_ci_checks_as_generated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = repo_copy(tmp_path / "repo")
    catalog_before = (root / "docs/dags.md").read_text()
    written: list[Path] = []
    dag_test_dates: dict[str, str] = {}
    start_date = default_start_date(datetime.now(UTC).date())
    for name, options, _ in GENERATED:
        assert main([name, *options, "--root", str(root)]) == EXIT_OK
        out = capsys.readouterr().out
        assert "docs/dags.md (regenerated" in out
        # The exact command for the first interval: the day after start_date, at the 03:00 UTC tick.
        first_end = datetime(start_date.year, start_date.month, start_date.day, 3, tzinfo=UTC) + timedelta(
            days=1
        )
        assert f"make dag-test DAG={name} DATE={first_end.isoformat()}\n" in out, out
        dag_test_dates[name] = first_end.isoformat()
        written += [root / path for path in plan_for(name, options, start_date).files()]
    assert all(path.is_file() for path in written)
    assert not list(REPO_ROOT.glob("dags/*/sales_widgets_sync.py")), "the scaffold wrote into the real repo"

    # The catalog was regenerated in the copy (not here), lists both syncs, and is what CI's check wants.
    catalog = (root / "docs/dags.md").read_text()
    assert catalog != catalog_before
    for name, _, table in GENERATED:
        assert f"\n## {name}\n" in catalog
        assert f"include/automations/{name}.yaml" in catalog
        assert f"`x-table://warehouse/{table.replace('.', '/')}`" in catalog
    assert (REPO_ROOT / "docs/dags.md").read_text() == catalog_before
    catalog_check = run_in(root, sys.executable, "-m", "tools.dag_catalog", "--check", "--root", root)
    assert catalog_check.returncode == 0, catalog_check.stdout[-4000:] + catalog_check.stderr[-2000:]

    dag_files = [root / "dags/sales/sales_widgets_sync.py", root / "dags/crm/crm_leads_sync.py"]
    checked = run_in(root, sys.executable, "-c", INTEGRITY_CHECK, json.dumps(dag_test_dates), *dag_files)
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
        # `make dag-test` of the printed DATE runs every task over the first scheduled interval.
        first_start = datetime(start_date.year, start_date.month, start_date.day, 3, tzinfo=UTC)
        assert result["dag_test_interval"] == [first_start.isoformat(), dag_test_dates[name]]
        assert result["dag_test_tasks"] == sorted(SYNC_TASKS)

    python_files = [path for path in written if path.suffix == ".py"]
    lint = run_in(root, RUFF, "check", "--no-cache", *python_files)
    assert lint.returncode == 0, lint.stdout
    formatting = run_in(root, RUFF, "format", "--check", "--no-cache", *python_files)
    assert formatting.returncode == 0, formatting.stdout

    stub_tests = [path for path in written if path.name.startswith("test_")]
    stubs = run_in(root, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *stub_tests)
    assert stubs.returncode == 0, stubs.stdout[-4000:] + stubs.stderr[-2000:]
    assert "6 passed" in stubs.stdout.splitlines()[-1], stubs.stdout[-2000:]


def plan_for(name: str, options: list[str], start_date: date = date(2026, 1, 1)) -> Scaffold:
    values = dict(zip(options[::2], options[1::2], strict=True))
    return plan(
        name,
        domain=values.get("--domain"),
        owner=values.get("--owner"),
        resource=values.get("--resource", "orders"),
        start_date=start_date,
    )


def test_generated_files_are_named_and_filled_from_the_options() -> None:
    scaffold = plan_for("crm_leads_sync", ["--resource", "customers", "--owner", "crm-growth"])
    files = {str(path): text for path, text in scaffold.files().items()}

    assert sorted(files) == [
        "dags/crm/crm_leads_sync.py",
        "include/automations/crm_leads_sync.yaml",
        "include/contracts/leads.py",
        "include/sql/targets/crm_leads.sql",
        "tests/automations/test_crm_leads_sync_spec.py",
    ]
    assert files["dags/crm/crm_leads_sync.py"] == (REPO_ROOT / "dags/sales/sales_orders_sync.py").read_text()
    spec = yaml.safe_load(files["include/automations/crm_leads_sync.yaml"])
    assert (spec["dag_id"], spec["owner"], spec["tags"]) == ("crm_leads_sync", "crm-growth", CRM_SYNC_TAGS)
    assert spec["source"]["endpoint"] == "/v1/customers"
    # The table and key are the contract's alone: the YAML names the contract, named after the table.
    assert spec["source"]["contract"] == "leads"
    assert {"table", "key"}.isdisjoint(spec["target"])
    contract = files["include/contracts/leads.py"]
    assert 'table="crm.leads"' in contract
    assert 'key=("customer_id",)' in contract
    assert 'RecordContract(source="leads", model=LeadsRecord)' in contract
    assert spec["schedule"]["start_date"] == date(2026, 1, 1)
    assert "CREATE TABLE IF NOT EXISTS crm.leads (" in files["include/sql/targets/crm_leads.sql"]
    assert "TODO" not in "".join(files.values())


@pytest.mark.parametrize(
    ("today", "start_date"),
    [
        (date(2026, 12, 6), date(2026, 11, 1)),
        (date(2026, 3, 31), date(2026, 3, 1)),
        (date(2026, 1, 15), date(2025, 12, 1)),
        (date(2026, 3, 1), date(2026, 1, 1)),
    ],
)
def test_the_start_date_is_a_month_start_at_least_30_days_back(today: date, start_date: date) -> None:
    assert default_start_date(today) == start_date


def test_the_printed_dag_test_date_is_the_end_of_the_first_interval() -> None:
    scaffold = plan_for("sales_widgets_sync", [], date(2026, 11, 1))

    assert scaffold.first_interval == (
        datetime(2026, 11, 1, 3, tzinfo=UTC),
        datetime(2026, 11, 2, 3, tzinfo=UTC),
    )
    assert (
        scaffold.dag_test_command() == "make dag-test DAG=sales_widgets_sync DATE=2026-11-02T03:00:00+00:00"
    )
    assert "DATE=2026-11-02T03:00:00+00:00" in scaffold.spec_yaml()


def test_a_catalog_that_cannot_be_regenerated_is_reported_with_the_files_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An empty root has no tools.dag_catalog to run: the files stay, the exit code and message say so.
    assert main(["sales_widgets_sync", "--root", str(tmp_path)]) == EXIT_CATALOG_FAILED

    assert "docs/dags.md was not regenerated" in capsys.readouterr().err
    assert (tmp_path / "include/automations/sales_widgets_sync.yaml").is_file()
    assert not (tmp_path / "docs").exists()


def test_every_demo_resource_is_scaffolded_with_the_fields_the_demo_api_sends() -> None:
    assert sorted(DEMO_RESOURCES) == sorted(FIELDS)
    for resource, demo in DEMO_RESOURCES.items():
        assert sorted(column.name for column in demo.columns) == sorted(name for name, _ in FIELDS[resource])


@pytest.mark.parametrize("resource", sorted(DEMO_RESOURCES))
def test_a_demo_resource_is_read_from_the_repos_contract_of_it(resource: str) -> None:
    """DEMO_RESOURCES repeats nothing: columns, types and key come from include/contracts/<resource>.py."""
    module = contract_module(resource)
    demo = DEMO_RESOURCES[resource]
    declared = {column.name: column.sql_type for column in target_columns(module.CONTRACT.model)}

    assert demo.key == module.TARGET.key
    assert tuple(column.name for column in demo.columns) == module.TARGET.columns
    for column in demo.columns:
        # The scaffold's shared type is of the contract column's Postgres type, spelt so in its DDL.
        assert SCAFFOLD_TYPES[declared[column.name]] == (column.contract_type, column.sql_type)
        shared_type = getattr(include.contracts, column.contract_type)
        assert target_columns(create_model("M", c=(shared_type, ...)))[0].sql_type == declared[column.name]


def test_a_contract_column_the_scaffold_has_no_shared_type_for_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(SCAFFOLD_TYPES, "numeric(12,2)")

    with pytest.raises(ValueError, match=r"include/contracts/orders\.py: column amount is numeric\(12,2\)"):
        demo_resource("orders")


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
        (["sales_class_sync"], "gives the table name 'class'"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(
    argv: list[str], complaint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--root", str(tmp_path)]) == EXIT_REFUSED

    assert complaint in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_existing_files_are_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sales_widgets_sync", "--no-catalog", "--root", str(tmp_path)]) == EXIT_OK
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
