"""batchkit.airflow_fixes refuses to patch an Airflow release nobody checked for apache/airflow#70368
or for the `airflow dags test` deadline crash."""

from __future__ import annotations

import airflow
import pytest
from airflow.models import dagrun as dagrun_module

from batchkit.airflow_fixes import (
    AFFECTED_VERSIONS,
    DAG_TEST_AFFECTED_VERSIONS,
    DAG_TEST_ISSUE,
    ISSUE,
    AirflowFixesPlugin,
    AirflowFixOutdated,
    check_affected_version,
    install_dag_test_deadline_fix,
    install_queued_at_deadline_fix,
)


@pytest.mark.parametrize("version", AFFECTED_VERSIONS)
def test_an_affected_release_passes(version: str) -> None:
    check_affected_version(version)


@pytest.mark.parametrize("version", ["3.3.3", "3.4.0", "3.2.9", "3.3.2rc1", "3.3.2.post1", "3.3"])
def test_any_other_release_is_refused_naming_the_version_and_the_issue(version: str) -> None:
    with pytest.raises(AirflowFixOutdated) as raised:
        check_affected_version(version)

    message = str(raised.value)
    assert f"Airflow {version} is installed" in message
    assert ISSUE in message
    assert "AFFECTED_VERSIONS" in message


def test_the_installed_airflow_is_an_affected_release() -> None:
    # Fails after an upgrade: check whether the new release still has the bug (see the module docstring).
    check_affected_version(airflow.__version__)


def test_the_plugin_load_path_checks_the_version_before_anything_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(airflow, "__version__", "3.4.0")

    with pytest.raises(AirflowFixOutdated, match=r"Airflow 3\.4\.0 is installed"):
        install_queued_at_deadline_fix()


@pytest.mark.parametrize("version", ["3.3.0", "3.3.1", "3.3.3", "3.4.0"])
def test_the_dag_test_fix_has_its_own_list_and_refuses_what_it_was_not_checked_on(version: str) -> None:
    with pytest.raises(AirflowFixOutdated) as raised:
        check_affected_version(
            version, DAG_TEST_AFFECTED_VERSIONS, DAG_TEST_ISSUE, "DAG_TEST_AFFECTED_VERSIONS"
        )

    message = str(raised.value)
    assert f"Airflow {version} is installed" in message
    assert DAG_TEST_ISSUE in message
    assert "DAG_TEST_AFFECTED_VERSIONS" in message


def test_the_dag_test_fix_checks_the_version_before_patching(monkeypatch: pytest.MonkeyPatch) -> None:
    before = dagrun_module.get_or_create_dagrun
    monkeypatch.setattr(airflow, "__version__", "3.4.0")

    with pytest.raises(AirflowFixOutdated, match=r"Airflow 3\.4\.0 is installed"):
        install_dag_test_deadline_fix()
    with pytest.raises(AirflowFixOutdated):
        AirflowFixesPlugin.on_load()
    assert dagrun_module.get_or_create_dagrun is before
