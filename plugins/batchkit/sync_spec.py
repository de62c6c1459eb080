"""The YAML file that declares a sync (include/automations/<dag_id>.yaml), validated with pydantic.

A sync file says where records come from (connection, endpoint, pagination, contract), where they go
(the contract's table and key, merge mode), when (cron, start date, catchup) and who answers for it (owner, tags, pool,
deadline, alert route). Validation is strict: unknown fields, unsafe identifiers and bad cron
expressions are errors naming the file and the field, raised at parse time so the DAG file becomes an
import error and CI fails; nothing is built from a file that does not validate.

Where things are found, explicitly and in one place each: the YAML under include_dir() (configured by
$BATCHKIT_INCLUDE_DIR or the importable `include` package, see batchkit.sql_files), and the record
contract through `contract_module`, which imports the module the file names (source.contract) from the
`include.contracts` package. That is this module's only reach into include/, and a configured one: it
imports nothing from include/ on its own, only the contract a sync file asks for, by name, from a
package on the PYTHONPATH of every component (batchkit.retention does the same for the declared
include.<domain>.retention modules, in a task). include/contracts in turn imports batchkit's types
(RecordContract, TargetSpec); batchkit never imports include/ at import time, so there is no import cycle.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from datetime import date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Literal

import yaml
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batchkit.contracts import RecordContract
from batchkit.extract.pagination import Pagination
from batchkit.extract.retry import RetryPolicy
from batchkit.load.identifiers import IDENTIFIER_PATTERN
from batchkit.load.postgres import MergeMode
from batchkit.load.postgres import TargetSpec as LoadTarget
from batchkit.policy import owner_problem
from batchkit.queues import Queue
from batchkit.sql_files import include_dir
from batchkit.taxonomy import tag_problems

if TYPE_CHECKING:
    from batchkit.alerts import AlertRoute

AUTOMATIONS_DIR = "automations"
# The package a sync file's source.contract names a module of (include/contracts/<contract>.py).
CONTRACTS_PACKAGE = "include.contracts"
# libyaml's safe loader when PyYAML was built with it (the wheels are): the same YAML, parsed ~10x faster
# than the pure-Python SafeLoader, and every sync file is parsed on every dag-processor loop.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DAG_ID_PATTERN = r"^[a-z][a-z0-9_]{2,62}$"
QUALIFIED_TABLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}\.[a-z_][a-z0-9_]{0,62}$")

Identifier = Annotated[str, Field(pattern=IDENTIFIER_PATTERN.pattern)]
ConnId = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]


class SyncSpecError(ValueError):
    """A sync file that does not validate; the message names the file and every bad field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScheduleSpec(_Strict):
    cron: str
    timezone: str = "UTC"
    start_date: date
    catchup: bool
    max_active_runs: int = Field(ge=1, le=16)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a valid cron expression")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        import pendulum

        try:
            pendulum.timezone(value)
        except Exception as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value


class IntervalParams(_Strict):
    """How the interval [start, end) is passed to the source as query parameters."""

    start: str = "updated_since"
    end: str = "updated_before"


class RetrySpec(_Strict):
    """How one request to the source is retried inside the task before Airflow's own retries count.

    Transient failures (timeouts, resets, 408/429/5xx) are retried with full-jitter exponential backoff
    (or after Retry-After) until `budget_seconds` since the first attempt are spent, so an outage
    shorter than the budget costs no Airflow try. `max_attempts` caps the count too, if set.
    """

    budget_seconds: float = Field(default=300, gt=0, le=3600)
    backoff_initial_seconds: float = Field(default=1, gt=0)
    backoff_max_seconds: float = Field(default=30, gt=0)
    max_attempts: int | None = Field(default=None, ge=1)

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            backoff_initial=self.backoff_initial_seconds,
            backoff_max=self.backoff_max_seconds,
            max_total_seconds=self.budget_seconds,
        )


class SourceSpec(_Strict):
    conn_id: ConnId
    endpoint: str = Field(pattern=r"^/[A-Za-z0-9_\-/.]*$")
    pool: ConnId
    # The Celery queue of the extract (batchkit.queues): workers that may wait on upstream APIs.
    queue: Queue = Queue.SOURCE
    pagination: Pagination
    interval_params: IntervalParams = IntervalParams()
    params: dict[str, str | int] = Field(default_factory=dict)
    # A module of include/contracts that defines CONTRACT (the record model) and TARGET (its table).
    contract: Identifier
    retry: RetrySpec = RetrySpec()
    # Page requests in flight at once. Above 1 only for pagination whose responses state the total
    # (page_number with total_pages_field, offset with total_field): those pages are requested ahead and
    # still committed strictly in order. Every request shares the connection's rate limit.
    max_concurrency: int = Field(default=1, ge=1, le=16)

    @model_validator(mode="after")
    def _concurrency_needs_a_stated_total(self) -> SourceSpec:
        if self.max_concurrency > 1 and not self.pagination.plans_ahead:
            raise ValueError(
                "max_concurrency above 1 needs pagination that states the total: page_number with "
                "total_pages_field, or offset with total_field (cursor and link_header pages are "
                "fetched one ahead anyway)"
            )
        return self


class TargetSection(_Strict):
    conn_id: ConnId = "warehouse"
    pool: ConnId = "warehouse"
    # The Celery queue of verify, merge and the checks (batchkit.queues).
    queue: Queue = Queue.WAREHOUSE
    # The table and its key are the contract's (its TARGET, include/contracts/<contract>.py): one
    # definition. A file may restate them for its readers; load_spec then refuses any mismatch, and
    # fills them in from the contract when they are left out.
    table: str | None = None
    key: list[Identifier] | None = Field(default=None, min_length=1)
    merge: Literal["upsert", "replace_interval"] = "upsert"
    # The timestamp column the interval is about: replace_interval deletes [start, end) of it, and the
    # freshness check reads it.
    interval_column: Identifier
    # Orders the versions of one key, so a backfill of older intervals never overwrites newer rows:
    # a stored row is replaced only by a version that is the same or newer. Defaults to interval_column.
    version_column: Identifier | None = None

    @field_validator("table")
    @classmethod
    def _qualified_table(cls, value: str | None) -> str | None:
        if value is not None and not QUALIFIED_TABLE.fullmatch(value):
            raise ValueError(f"{value!r} must be a lowercase schema-qualified table such as sales.orders")
        return value


class ColumnChecks(_Strict):
    """Checks of one target column over the interval's rows (`quality.columns.<column>` in the YAML)."""

    not_null: bool = False
    unique: bool = False
    min: float | None = None
    max: float | None = None
    accepted_values: list[str | int] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _bounds_in_order(self) -> ColumnChecks:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    def column_mapping(self) -> dict[str, dict[str, float]]:
        """common-sql's SQLColumnCheckOperator form (accepted_values is a table check: see QualitySpec)."""
        mapping: dict[str, dict[str, float]] = {}
        if self.not_null:
            mapping["null_check"] = {"equal_to": 0}
        if self.unique:
            mapping["unique_check"] = {"equal_to": 0}
        if self.min is not None:
            mapping["min"] = {"geq_to": self.min}
        if self.max is not None:
            mapping["max"] = {"leq_to": self.max}
        return mapping


class TableCheck(_Strict):
    """A custom check: `sql` is a boolean SQL expression over the interval's rows, such as
    `SUM(amount) >= 0` or `COUNT(DISTINCT customer_id) <= COUNT(*)`; the check passes when it is true."""

    name: Identifier
    sql: str = Field(min_length=1)


class QualitySpec(_Strict):
    """Data-quality checks run after every merge, on the interval's rows (common-sql check operators;
    each result is recorded in batch_meta.quality_results and a failure names the column and check)."""

    min_rows: int = Field(default=0, ge=0)
    max_rows: int | None = Field(default=None, ge=1)
    max_staleness_hours: float = Field(default=48, gt=0)
    columns: dict[Identifier, ColumnChecks] = Field(default_factory=dict)
    checks: list[TableCheck] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> QualitySpec:
        if self.max_rows is not None and self.max_rows < self.min_rows:
            raise ValueError(f"max_rows {self.max_rows} is below min_rows {self.min_rows}")
        names = [check.name for check in self.checks]
        if duplicated := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"checks: duplicate name(s) {duplicated}")
        return self

    def column_mapping(self) -> dict[str, dict[str, dict[str, float]]]:
        """The declared column checks in SQLColumnCheckOperator's form (columns with none left out)."""
        return {
            column: mapping for column, checks in self.columns.items() if (mapping := checks.column_mapping())
        }

    def table_checks(self) -> dict[str, str]:
        """Check name -> boolean SQL over the interval's rows: row bounds, accepted values, custom checks."""
        statements = {"interval_row_count": f"COUNT(*) >= {self.min_rows}"}
        if self.max_rows is not None:
            statements["interval_row_count_max"] = f"COUNT(*) <= {self.max_rows}"
        for column, checks in self.columns.items():
            if checks.accepted_values:
                values = ", ".join(_sql_literal(value) for value in checks.accepted_values)
                statements[f"{column}_accepted_values"] = (
                    f"COUNT(*) FILTER (WHERE {column} NOT IN ({values})) = 0"
                )
        statements.update({check.name: check.sql for check in self.checks})
        return statements


def _sql_literal(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


class AlertSpec(_Strict):
    """Where the sync's alerts go. The channels come from its `tier:` tag (batchkit.alert_channels.
    TIER_CHANNELS); these override the connections they use, and `email_to` adds email to any tier."""

    webhook_conn_id: ConnId = "alerts_webhook"
    endpoint: str | None = None
    slack_conn_id: ConnId = "alerts_slack"
    smtp_conn_id: ConnId = "alerts_smtp"
    email_to: list[str] = Field(default_factory=list)

    def route(self) -> AlertRoute:
        """The AlertRoute for standard_dag (which adds the tier's channels and the runbook line)."""
        from batchkit.alerts import AlertRoute

        return AlertRoute(
            http_conn_id=self.webhook_conn_id,
            endpoint=self.endpoint,
            email_to=tuple(self.email_to),
            smtp_conn_id=self.smtp_conn_id,
            slack_conn_id=self.slack_conn_id,
        )


class SyncSpec(_Strict):
    dag_id: str = Field(pattern=DAG_ID_PATTERN)
    description: str = Field(min_length=10)
    owner: str = Field(min_length=2)
    tags: list[str]
    schedule: ScheduleSpec
    deadline_minutes: int = Field(ge=1)
    retries: int = Field(default=3, ge=2)
    # The first retry's delay; later ones grow exponentially (standard_dag's backoff, capped).
    retry_delay_seconds: int = Field(default=30, ge=1)
    alerts: AlertSpec = AlertSpec()
    source: SourceSpec
    target: TargetSection
    quality: QualitySpec = QualitySpec()
    max_quarantine_ratio: float = Field(default=0.05, ge=0, le=1)
    runbook: str = Field(min_length=10)

    @field_validator("tags")
    @classmethod
    def _taxonomy(cls, value: list[str]) -> list[str]:
        problems = tag_problems(value)
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("owner")
    @classmethod
    def _real_owner(cls, value: str) -> str:
        if problem := owner_problem(value):
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _interval_column_is_not_the_key(self) -> SyncSpec:
        key = self.target.key or ()
        if self.target.merge == "replace_interval" and self.target.interval_column in key:
            raise ValueError("target.interval_column must be a timestamp column, not part of target.key")
        return self

    def contract_module(self) -> ModuleType:
        return contract_module(self.source.contract)

    def record_contract(self) -> RecordContract:
        return self.contract_module().CONTRACT

    def target_spec(self) -> LoadTarget:
        """The contract's table as this file loads it: merge mode and interval column from the file."""
        declared: LoadTarget = self.contract_module().TARGET
        return dataclasses.replace(
            declared,
            mode=MergeMode(self.target.merge),
            interval_column=self.target.interval_column,
            version_column=self.target.version_column or self.target.interval_column,
        )

    @property
    def deadline(self) -> timedelta:
        return timedelta(minutes=self.deadline_minutes)

    @property
    def retry_delay(self) -> timedelta:
        return timedelta(seconds=self.retry_delay_seconds)

    @property
    def start_datetime(self) -> datetime:
        import pendulum

        start = self.schedule.start_date
        return pendulum.datetime(start.year, start.month, start.day, tz=self.schedule.timezone)


def contract_module(name: str) -> ModuleType:
    """The record contract module `name` of the `include.contracts` package: CONTRACT and TARGET.

    The one place a sync's contract is imported (see the module docstring); an unknown name raises
    ImportError, which `load_spec` reports against the file's source.contract.
    """
    return importlib.import_module(f"{CONTRACTS_PACKAGE}.{name}")


def automations_dir() -> Path:
    return include_dir() / AUTOMATIONS_DIR


def spec_path(dag_id: str) -> Path:
    return automations_dir() / f"{dag_id}.yaml"


def load_spec(path: Path) -> SyncSpec:
    """Read and validate one sync file; SyncSpecError names the file and each bad field."""
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    except (OSError, yaml.YAMLError) as exc:
        raise SyncSpecError(f"{path}: cannot read the sync file: {exc}") from exc
    if not isinstance(raw, dict):
        raise SyncSpecError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        spec = SyncSpec.model_validate(raw)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        ]
        raise SyncSpecError(f"{path}: invalid sync file:\n" + "\n".join(lines)) from None
    if spec.dag_id != path.stem:
        raise SyncSpecError(f"{path}: dag_id {spec.dag_id!r} must match the file name {path.stem!r}")
    try:
        declared = spec.target_spec()
    except ImportError as exc:
        raise SyncSpecError(
            f"{path}: source.contract: no contract module include/contracts/{spec.source.contract}.py: {exc}"
        ) from exc
    except (AttributeError, ValueError) as exc:
        raise SyncSpecError(f"{path}: source.contract / target: {exc}") from exc
    if unknown := sorted(set(spec.quality.columns) - set(declared.columns)):
        raise SyncSpecError(
            f"{path}: quality.columns: {unknown} not among the columns of {declared.table}: {list(declared.columns)}"
        )
    # The contract declares the table and key; a file that restates them must restate them exactly.
    for field, stated, actual in (
        ("target.table", spec.target.table, declared.table),
        ("target.key", None if spec.target.key is None else tuple(spec.target.key), declared.key),
    ):
        if stated is not None and stated != actual:
            raise SyncSpecError(
                f"{path}: {field} is {stated!r} but contract {spec.source.contract!r} declares {actual!r}"
            )
    if spec.target.merge == "replace_interval" and spec.target.interval_column in declared.key:
        raise SyncSpecError(
            f"{path}: target.interval_column must be a timestamp column, not part of the key "
            f"{list(declared.key)} of contract {spec.source.contract!r}"
        )
    # Filled in from the contract, so a loaded spec always states them (the DAG's docs and checks read them).
    target = spec.target.model_copy(update={"table": declared.table, "key": list(declared.key)})
    return spec.model_copy(update={"target": target})
