"""tests/batchkit mirrors plugins/batchkit: each library module has its test module at the same path,
plugins/batchkit/<path>/<module>.py -> tests/batchkit/<path>/test_<module>.py, holding the tests that
exercise that module (a flow across modules is tested in the module of its entry point). A module whose
tests are integration tests elsewhere (a DAG run, the DAG bag, the stack) is named in TESTED_ELSEWHERE
with the file that covers it, so "where is X tested?" always has one answer, and a new module without
either fails here."""

from __future__ import annotations

from pathlib import Path

from tools import REPO_ROOT

LIBRARY = REPO_ROOT / "plugins" / "batchkit"
TESTS = REPO_ROOT / "tests" / "batchkit"

# Library modules without a tests/batchkit/<path>/test_<module>.py: where they are tested instead.
# Keys are paths under plugins/batchkit/, values paths from the repository root.
TESTED_ELSEWHERE: dict[str, str] = {
    # The DAG factory builds every DAG: the DAG bag's integrity (and standard_dag's alert routing in
    # tests/batchkit/test_alerts.py).
    "dag_factory.py": "tests/dags/test_dag_integrity.py",
    # The cluster policy's rules, applied to every DAG and to a violating fixture DAG.
    "policy.py": "tests/dags/test_dag_integrity.py",
    # The tags every DAG must carry, checked on the DAG bag.
    "taxonomy.py": "tests/dags/test_dag_integrity.py",
    # The retention sweep, run as platform_cleanup's DAG against the warehouse.
    "retention.py": "tests/automations/test_cleanup.py",
    # The daily report's files, charts and delivery, run as its DAG.
    "report_charts.py": "tests/automations/test_report.py",
    "report_delivery.py": "tests/automations/test_report.py",
    "report_files.py": "tests/automations/test_report.py",
    # The sync DAG built from each YAML spec, run end to end.
    "sync_dag.py": "tests/automations/test_sync_dags.py",
    # Every YAML spec loads and validates against the models.
    "sync_spec.py": "tests/automations/test_sync_spec.py",
}

# Test modules under tests/batchkit that mirror no single module, and why.
CROSS_CUTTING: dict[str, str] = {
    # Imports each core module in a fresh interpreter: none of them loads Airflow.
    "test_core_is_plain.py": "the whole sync core",
    # batchkit.alerts' tier-3 digest end to end (real SMTP, the platform_alert_digest DAG); a second test
    # module for alerts.py, beside tests/batchkit/test_alerts.py.
    "test_alert_digest.py": "alerts.py",
}


def library_modules() -> list[Path]:
    # __init__.py files only mark packages and re-export; their subpackage's test package must exist.
    return sorted(
        path.relative_to(LIBRARY)
        for path in LIBRARY.rglob("*.py")
        if "__pycache__" not in path.parts and path.name != "__init__.py"
    )


def mirror_of(module: Path) -> Path:
    return TESTS / module.parent / f"test_{module.name}"


def test_every_library_module_has_its_test_module_or_names_where_it_is_tested() -> None:
    modules = library_modules()
    assert Path("sync.py") in modules
    assert Path("extract/pagination.py") in modules

    untested = [
        module.as_posix()
        for module in modules
        if not mirror_of(module).is_file() and module.as_posix() not in TESTED_ELSEWHERE
    ]
    assert untested == [], (
        f"no tests/batchkit/<path>/test_<module>.py nor a TESTED_ELSEWHERE entry: {untested}"
    )


def test_every_mapping_names_a_module_without_a_mirror_and_a_test_file_that_exists() -> None:
    for module, test_file in TESTED_ELSEWHERE.items():
        assert (LIBRARY / module).is_file(), f"TESTED_ELSEWHERE names a module that does not exist: {module}"
        assert not mirror_of(Path(module)).is_file(), f"{module} has its test module now: drop its entry"
        assert test_file.startswith("tests/"), test_file
        assert test_file.endswith(".py"), test_file
        assert (REPO_ROOT / test_file).is_file(), f"{module}: {test_file} does not exist"


def test_every_test_module_mirrors_a_library_module_in_a_package_of_its_own() -> None:
    for package in sorted(path.parent for path in LIBRARY.rglob("__init__.py")):
        init = TESTS / package.relative_to(LIBRARY) / "__init__.py"
        assert init.is_file(), f"{init.relative_to(REPO_ROOT)} is missing"

    strays = []
    for test_module in sorted(TESTS.rglob("test_*.py")):
        relative = test_module.relative_to(TESTS)
        module = relative.parent / relative.name.removeprefix("test_")
        if not (LIBRARY / module).is_file() and relative.as_posix() not in CROSS_CUTTING:
            strays.append(relative.as_posix())
    assert strays == [], (
        f"test modules under tests/batchkit that mirror no module of plugins/batchkit: {strays}"
    )
    for name, subject in CROSS_CUTTING.items():
        assert (TESTS / name).is_file(), f"CROSS_CUTTING names a test module that does not exist: {name}"
        assert subject, name
