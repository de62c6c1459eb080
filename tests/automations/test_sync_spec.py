"""Sync files (include/automations/*.yaml) that do not validate are refused, naming the file and field,
both by load_spec and as the import error of the DAG file that reads them."""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchkit.sql_files import INCLUDE_DIR_ENV
from batchkit.sync_dag import build_sync_dag
from batchkit.sync_spec import SyncSpecError, automations_dir, load_spec
from tools import REPO_ROOT

DAG_ID = "sales_orders_sync"
DAG_FILE = REPO_ROOT / "dags" / "sales" / f"{DAG_ID}.py"
REPO_SPEC = REPO_ROOT / "include" / "automations" / f"{DAG_ID}.yaml"
INJECTION = "orders; drop table x"


def declared() -> dict[str, Any]:
    """The repo's sales_orders_sync.yaml as a document, to break one field at a time."""
    return yaml.safe_load(REPO_SPEC.read_text(encoding="utf-8"))


def with_field(document: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    *parents, name = dotted.split(".")
    section = changed
    for parent in parents:
        section = section[parent]
    section[name] = value
    return changed


def write_spec(folder: Path, stem: str, document: dict[str, Any]) -> Path:
    path = folder / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@pytest.mark.parametrize("path", sorted(automations_dir().glob("*.yaml")), ids=lambda path: path.stem)
def test_the_repo_sync_files_validate(path: Path) -> None:
    spec = load_spec(path)
    assert spec.dag_id == path.stem


@pytest.mark.parametrize(
    ("field", "value", "named_in_error"),
    [
        pytest.param(
            "target.partition_by",
            "day",
            "target.partition_by: Extra inputs are not permitted",
            id="unknown_field",
        ),
        pytest.param(
            "schedule_typo",
            "0 2 * * *",
            "schedule_typo: Extra inputs are not permitted",
            id="unknown_top_level_field",
        ),
        pytest.param(
            "target.table", INJECTION, f"target.table: Value error, {INJECTION!r}", id="sql_as_table"
        ),
        pytest.param("target.key", [INJECTION], "target.key.0: String should match pattern", id="sql_as_key"),
        pytest.param(
            "schedule.cron",
            "61 25 * * *",
            "schedule.cron: Value error, '61 25 * * *' is not a valid cron expression",
            id="bad_cron",
        ),
        pytest.param(
            "source.contract",
            "invoices",
            "source.contract: no contract module include/contracts/invoices.py",
            id="missing_contract",
        ),
        pytest.param(
            "target.key",
            ["customer_id"],
            "target.key is ('customer_id',) but contract 'orders' declares ('order_id',)",
            id="key_disagrees_with_contract",
        ),
        pytest.param(
            "target.table",
            "sales.orders_v2",
            "target.table is 'sales.orders_v2' but contract 'orders' declares 'sales.orders'",
            id="table_disagrees_with_contract",
        ),
        pytest.param(
            "target",
            {"merge": "replace_interval", "interval_column": "order_id", "version_column": "updated_at"},
            "target.interval_column must be a timestamp column, not part of the key ['order_id']",
            id="interval_column_in_the_contracts_key",
        ),
        pytest.param(
            "source.retry",
            {"budget_seconds": 0},
            "source.retry.budget_seconds: Input should be greater than 0",
            id="zero_retry_budget",
        ),
        pytest.param(
            "target.version_column",
            "order_id; drop table x",
            "target.version_column: String should match pattern",
            id="sql_as_version_column",
        ),
        pytest.param(
            "retry_delay_seconds",
            0,
            "retry_delay_seconds: Input should be greater than or equal to 1",
            id="zero_retry_delay",
        ),
        # records_field: the one style whose default is not `data` must state it; a style that reads a
        # field from the body cannot have the body itself as the record list; a path has no empty step.
        pytest.param(
            "source.pagination",
            {"style": "link_header", "size_param": "page_size", "page_size": 100},
            "source.pagination: Value error, link_header pagination needs records_field stated",
            id="link_header_without_records_field",
        ),
        pytest.param(
            "source.pagination",
            {"style": "cursor", "cursor_field": "meta.next", "records_field": None},
            "source.pagination.cursor: Value error, records_field is null (the body is the record array) "
            "but cursor pagination reads cursor_field 'meta.next' from the body",
            id="cursor_with_the_body_as_records",
        ),
        pytest.param(
            "source.pagination",
            {"style": "page_number", "total_pages_field": "total_pages", "records_field": None},
            "source.pagination.page_number: Value error, records_field is null",
            id="page_total_with_the_body_as_records",
        ),
        pytest.param(
            "source.pagination",
            {"style": "offset", "total_field": "total", "records_field": None},
            "but offset pagination reads total_field 'total' from the body",
            id="offset_total_with_the_body_as_records",
        ),
        pytest.param(
            "source.pagination",
            {"style": "offset", "records_field": "data..items"},
            "source.pagination.offset.records_field: String should match pattern",
            id="records_field_with_an_empty_step",
        ),
        pytest.param(
            "source.pagination",
            {"style": "link", "records_field": None},
            "source.pagination: Input tag 'link' found using 'style' does not match any of the expected tags",
            id="unknown_pagination_style",
        ),
    ],
)
def test_an_invalid_sync_file_is_refused_naming_the_file_and_field(
    tmp_path: Path, field: str, value: Any, named_in_error: str
) -> None:
    path = write_spec(tmp_path, DAG_ID, with_field(declared(), field, value))

    with pytest.raises(SyncSpecError) as refused:
        load_spec(path)

    message = str(refused.value)
    assert message.startswith(f"{path}: ")
    assert named_in_error in message


@pytest.mark.parametrize(
    ("pagination", "records_field"),
    [
        ({"style": "page_number"}, "data"),
        ({"style": "offset", "total_field": "total_records"}, "data"),
        ({"style": "cursor", "cursor_field": "meta.next", "records_field": "items"}, "items"),
        ({"style": "link_header", "records_field": None}, None),
        ({"style": "link_header", "records_field": "data"}, "data"),
        ({"style": "page_number", "records_field": None}, None),
    ],
)
def test_records_field_is_data_unless_the_file_states_it(
    tmp_path: Path, pagination: dict[str, Any], records_field: str | None
) -> None:
    path = write_spec(tmp_path, DAG_ID, with_field(declared(), "source.pagination", pagination))

    assert load_spec(path).source.pagination.records_field == records_field


def test_a_dag_id_that_is_not_the_file_name_is_refused(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "sales_orders_copy", declared())

    with pytest.raises(SyncSpecError) as refused:
        load_spec(path)

    assert str(refused.value) == (f"{path}: dag_id {DAG_ID!r} must match the file name 'sales_orders_copy'")


def test_the_retry_delay_comes_from_the_file(tmp_path: Path) -> None:
    default = load_spec(write_spec(tmp_path, DAG_ID, declared()))
    quick = load_spec(write_spec(tmp_path, DAG_ID, with_field(declared(), "retry_delay_seconds", 5)))

    assert build_sync_dag(default).default_args["retry_delay"] == timedelta(seconds=30)
    assert build_sync_dag(quick).default_args["retry_delay"] == timedelta(seconds=5)


def test_the_dag_file_of_an_invalid_sync_file_becomes_an_import_error_naming_file_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from batchkit.sql_files import include_dir

    include = tmp_path / "include"
    (include / "automations").mkdir(parents=True)
    (include / "sql").symlink_to(include_dir() / "sql")
    dags = tmp_path / "dags"
    dags.mkdir()
    dag_file = dags / DAG_FILE.name
    dag_file.write_text(DAG_FILE.read_text())
    monkeypatch.setenv(INCLUDE_DIR_ENV, str(include))

    spec_file = write_spec(include / "automations", DAG_ID, declared())
    valid = DagBag(dag_folder=dag_file)
    assert (valid.import_errors, list(valid.dags)) == ({}, [DAG_ID]), "the setup itself must parse"

    write_spec(include / "automations", DAG_ID, with_field(declared(), "target.table", INJECTION))
    invalid = DagBag(dag_folder=dag_file)

    assert invalid.dags == {}
    [(errored_file, error)] = invalid.import_errors.items()
    assert errored_file == str(dag_file)
    assert f"SyncSpecError: {spec_file}: invalid sync file" in error
    assert f"target.table: Value error, {INJECTION!r}" in error


def test_the_in_task_retry_budget_and_version_column_come_from_the_file(tmp_path: Path) -> None:
    document = with_field(declared(), "source.retry", {"budget_seconds": 120, "backoff_max_seconds": 10})
    spec = load_spec(write_spec(tmp_path, DAG_ID, document))

    policy = build_sync_dag(spec).get_task("extract_stage").source.retry_policy

    assert (policy.max_total_seconds, policy.backoff_max, policy.max_attempts) == (120, 10, None)
    assert spec.target_spec().version_column == spec.target.interval_column == "updated_at"


def test_the_source_query_holds_only_the_files_params_never_the_run_params() -> None:
    """The DAG's run params (dry_run) must never leak into the request sent to the source."""
    spec = load_spec(automations_dir() / "sales_orders_sync.yaml")
    spec = spec.model_copy(update={"source": spec.source.model_copy(update={"params": {"region": "eu"}})})

    extract = build_sync_dag(spec).get_task("extract_stage")

    assert extract.source.query_params == {"region": "eu"}
    assert "dry_run" in extract.params


def test_a_sync_file_overrides_its_alert_connections_and_the_tier_picks_the_channels(tmp_path: Path) -> None:
    document = with_field(
        declared(),
        "alerts",
        {"webhook_conn_id": "sales_pager", "slack_conn_id": "sales_slack", "email_to": ["a@x.test"]},
    )
    spec = load_spec(write_spec(tmp_path, DAG_ID, document))

    route = spec.alerts.route().routed(tier="tier:2")

    assert (route.http_conn_id, route.slack_conn_id, route.smtp_conn_id) == (
        "sales_pager",
        "sales_slack",
        "alerts_smtp",
    )
    # tier:2 is Slack; the file's email_to adds email.
    assert route.channel_list() == ("slack", "email")
    with pytest.raises(SyncSpecError, match="slack_conn_id"):
        load_spec(write_spec(tmp_path, DAG_ID, with_field(document, "alerts.slack_conn_id", "Bad-Id")))


def test_the_table_and_key_come_from_the_contract_and_a_restatement_must_match(tmp_path: Path) -> None:
    # The repo's files leave them out: one definition, the contract's TARGET.
    assert {"table", "key"}.isdisjoint(declared()["target"])
    derived = load_spec(write_spec(tmp_path, DAG_ID, declared()))
    restated = with_field(with_field(declared(), "target.table", "sales.orders"), "target.key", ["order_id"])

    assert (derived.target.table, derived.target.key) == ("sales.orders", ["order_id"])
    assert load_spec(write_spec(tmp_path, DAG_ID, restated)) == derived
    assert (derived.target_spec().table, derived.target_spec().key) == ("sales.orders", ("order_id",))
