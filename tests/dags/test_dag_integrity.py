"""Every DAG in dags/ parses cleanly, follows the house rules, does no I/O at parse time and parses fast.

The rules are batchkit.policy's, the same the live cluster policy enforces, so a DAG that passes here is
accepted by the dag-processor and one that fails names the file, the DAG, the task and the rule.

Cost per DAG file (BENCHMARKS.md, "DAG integrity cost"): the rules run over one DagBag of the whole
folder; the parse-time I/O and budget probe runs for all files in ONE subprocess that imports Airflow
once and forks a child per file, one per CPU at a time (bench.parse_time.probe_many), so each file still
parses alone, in a process where nothing of it was imported before, as the dag-processor parses it.
"""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import Asset

from batchkit.policy import dag_problems, task_problems
from bench.parse_time import DAGS_DIR, PARSE_BUDGET_SECONDS, dag_files, probe, probe_many
from tools import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures"
# Calls that make a start_date move with the clock: a DAG's schedule must not depend on when it parsed.
DYNAMIC_DATE_CALLS = frozenset({"now", "utcnow", "today", "days_ago", "yesterday"})

DAG_FILES = dag_files()


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=DAGS_DIR)


def test_there_are_dags_to_check(dagbag: DagBag) -> None:
    assert DAG_FILES, f"no DAG files under {DAGS_DIR}"
    assert dagbag.dags, "the DagBag is empty: nothing was checked"


def test_no_import_errors(dagbag: DagBag) -> None:
    assert not dagbag.import_errors, "\n\n".join(f"{f}:\n{e}" for f, e in dagbag.import_errors.items())


def test_every_dag_and_task_follows_the_rules(dagbag: DagBag) -> None:
    problems = []
    for dag_id, dag in sorted(dagbag.dags.items()):
        where = f"{Path(dag.fileloc).relative_to(DAGS_DIR.parent)} DAG {dag_id!r}"
        problems += [f"{where}: {p}" for p in dag_problems(dag)]
        for task in dag.tasks:
            problems += [f"{where} task {task.task_id!r}: {p}" for p in task_problems(task)]
    assert not problems, "\n".join(problems)


def assets_of(dag: Any) -> list[Asset]:
    """Every Asset a DAG is scheduled on, produces or reads."""
    found: list[Asset] = []

    def walk(node: Any) -> None:
        if isinstance(node, Asset):
            found.append(node)
        for part in getattr(node, "objects", ()):  # AssetAll / AssetAny
            walk(part)

    walk(getattr(dag.timetable, "asset_condition", None))
    for task in dag.tasks:
        for item in [*task.outlets, *task.inlets]:
            walk(item)
    return found


def test_asset_uris_use_a_custom_scheme(dagbag: DagBag) -> None:
    """An Asset URI scheme without the `x-` prefix makes every process that builds the DAG (each parse,
    each task) load every provider's asset URI handlers, boto3 included: that was half of a sync file's
    parse (BENCHMARKS.md, "Parse time: the asset URI scheme"). batchkit.assets.table_asset uses `x-table`."""
    assets = {dag_id: assets_of(dag) for dag_id, dag in dagbag.dags.items()}
    assert any(assets.values()), "no DAG has an Asset: nothing was checked"
    wrong = sorted(
        f"{dag_id}: {a.uri}" for dag_id, found in assets.items() for a in found if not a.uri.startswith("x-")
    )
    assert not wrong, "Asset URIs without an x- scheme:\n" + "\n".join(wrong)


def test_python_dag_files_are_named_after_their_dag(dagbag: DagBag) -> None:
    by_file: dict[str, list[str]] = {}
    for dag_id, dag in dagbag.dags.items():
        by_file.setdefault(dag.fileloc, []).append(dag_id)
    wrong = {f: ids for f, ids in by_file.items() if ids != [Path(f).stem]}
    assert not wrong, f"one automation per file, named after its dag_id: {wrong}"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: str(p.relative_to(DAGS_DIR)))
def test_start_date_is_fixed(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    dynamic = [
        f"line {node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute | ast.Name)
        and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) in DYNAMIC_DATE_CALLS
    ]
    assert not dynamic, f"{path}: dates computed from the clock at parse time: {dynamic}"


@pytest.fixture(scope="module")
def probes() -> dict[Path, dict]:
    """Every DAG file probed once (each in a process of its own, forked from one prepared interpreter)."""
    return probe_many(DAG_FILES, dict(os.environ))


def test_every_file_was_probed(probes: dict[Path, dict]) -> None:
    assert sorted(probes) == DAG_FILES


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: str(p.relative_to(DAGS_DIR)))
def test_parses_without_io_within_budget(path: Path, probes: dict[Path, dict]) -> None:
    result = probes[path]
    assert not result["crash"], f"{path}: the parser process crashed: {result['crash']}"
    assert not result["import_errors"], f"{path} fails to import with no database: {result['import_errors']}"
    assert result["dag_ids"], f"{path} defines no DAG"
    assert not result["io_events"], f"{path} does I/O at parse time: {result['io_events']}"
    assert result["parse_seconds"] <= PARSE_BUDGET_SECONDS, (
        f"{path} took {result['parse_seconds']:.2f}s to parse (budget {PARSE_BUDGET_SECONDS}s)"
    )


def test_the_live_policy_rejects_a_violating_dag(tmp_path: Path) -> None:
    """The DagBag applies config/airflow_local_settings.py, exactly as the dag-processor does."""
    shutil.copy(FIXTURES / "dags_violating" / "policy_violating_dag.py", tmp_path)
    bag = DagBag(dag_folder=tmp_path)

    assert not bag.dags
    [message] = bag.import_errors.values()
    assert "AirflowClusterPolicyViolation" in message
    for rule in ("owner", "tags", "Runbook", "DeadlineAlert", "catchup", "retries", "on_failure_callback"):
        assert rule in message, f"the violation message does not mention {rule!r}:\n{message}"
    assert "calls external system(s) ['demo_api']" in message


def test_parse_time_io_is_detected(tmp_path: Path) -> None:
    """The probe itself works: a file that reads a Variable and opens a socket at parse time is caught."""
    offender = tmp_path / "io_at_parse_time.py"
    offender.write_text(
        "# DAG file (the DagBag only imports files that mention airflow and dag)\n"
        "import socket\n"
        "from airflow.sdk import Variable\n"
        "Variable.get('anything', default=None)\n"
        "socket.socket().connect_ex(('127.0.0.1', 1))\n"
    )
    events = probe(offender, dict(os.environ))["io_events"]
    assert any(e.startswith("Variable.get") for e in events), events
    assert any(e.startswith("socket.connect") for e in events), events


def test_the_forked_probes_see_what_a_fresh_interpreter_sees(tmp_path: Path) -> None:
    """probe_many (one interpreter, a forked child per file) catches the same parse-time I/O as a
    fresh interpreter per file, attributes it to the right file only, and reports a child that dies."""
    offender = tmp_path / "io_at_parse_time.py"
    offender.write_text(
        "# DAG file (the DagBag only imports files that mention airflow and dag)\n"
        "import socket\n"
        "from airflow.sdk import Variable\n"
        "Variable.get('anything', default=None)\n"
        "socket.socket().connect_ex(('127.0.0.1', 1))\n"
    )
    clean = tmp_path / "clean.py"
    clean.write_text("# airflow dag: nothing at parse time\nimport datetime\n")
    dies = tmp_path / "dies.py"
    dies.write_text("# airflow dag\nimport os\nos._exit(3)\n")

    results = probe_many([offender, clean, dies], dict(os.environ))

    events = results[offender]["io_events"]
    assert any(e.startswith("Variable.get") for e in events), events
    assert any(e.startswith("socket.connect") for e in events), events
    assert results[clean]["io_events"] == []
    assert results[clean]["crash"] is None
    assert "died" in results[dies]["crash"]
