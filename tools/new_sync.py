"""`make new-sync`: scaffold a YAML sync that passes CI as generated, then edit it for the real source.

    PYTHONPATH=plugins python -m tools.new_sync NAME [--domain sales] [--owner TEAM] [--resource orders]

Writes, for NAME (a dag_id) in domain D with target table D.<table>:

    include/automations/NAME.yaml            the sync (batchkit.sync_spec.SyncSpec), against the demo API
    dags/D/NAME.py                           the two-line DAG file that builds it
    include/contracts/<table>.py             the record model (CONTRACT) and the table it loads (TARGET)
    include/sql/targets/D_<table>.sql        that table's DDL
    tests/automations/test_NAME_spec.py      the spec loads, the DAG parses with the sync's tasks, the DDL
                                             fits the contract

The defaults read `--resource` (orders or customers) of the demo upstream API (tools/demo_upstream.py)
through the `demo_api` connection and pool; <table> is NAME without its `D_` prefix and `_sync` suffix.
The contract is named after the records it describes, the table's name, as every contract is (orders.py
loads sales.orders); the YAML names it and takes the table and key from it. What a demo resource's
records hold (fields, types, key) is read from the repo's contract of that resource (DEMO_RESOURCES), so
the scaffold's model and DDL are derived, never a second copy of them.
The domain defaults to NAME's first word when that is a taxonomy domain. Nothing is written when NAME is
not a valid dag_id, when any of the files (or a DAG file of that name in another domain) exists, or when
the generated YAML would not validate.

`schedule.start_date` is the first day of the month 30 days before today (default_start_date): a fixed
date, so `make dag-test` can run any interval from then on (a DAG has no task instances for a logical
date before its start_date, and `airflow dags test` of such a date "succeeds" having run nothing). The
scaffold prints the exact `make dag-test` command for its first interval. It then regenerates the DAG
catalog (docs/dags.md, as `make catalog` does), so the new sync passes `make test` as written.
"""

from __future__ import annotations

import argparse
import keyword
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from string import Template

import yaml
from croniter import croniter
from pydantic import ValidationError

from batchkit.load.identifiers import IDENTIFIER_PATTERN
from batchkit.sync_spec import DAG_ID_PATTERN, SyncSpec, contract_module
from batchkit.taxonomy import DOMAIN_PREFIX, Tag
from include.contracts import target_columns
from tools import REPO_ROOT
from tools.demo_upstream import RESOURCES

DOMAINS = tuple(sorted(tag.value.removeprefix(DOMAIN_PREFIX) for tag in Tag if tag.startswith(DOMAIN_PREFIX)))
OWNER_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{1,62}$")
# The sync's tasks as batchkit.sync_dag builds them, in dependency order: the generated test pins them.
SYNC_TASKS = ("extract_stage", "verify_quarantine", "merge", "check_keys", "check_rows_and_freshness")
# The demo API filters on updated_at (updated_since / updated_before), so every demo resource has it.
INTERVAL_COLUMN = "updated_at"
# The scaffold's schedule (SPEC_TEMPLATE): daily at 03:00 UTC.
CRON = "0 3 * * *"
TIMEZONE = "UTC"
# How far back the scaffold's start_date reaches: at least this many days, then to the month's first day.
START_DATE_LOOKBACK_DAYS = 30
EXIT_OK = 0
EXIT_REFUSED = 1
# The files are written but docs/dags.md could not be regenerated (a DAG file does not import).
EXIT_CATALOG_FAILED = 2


class ScaffoldError(ValueError):
    """A NAME or option the scaffold refuses, or a file it would overwrite."""


# The shared type of include/contracts/__init__.py the scaffold writes for a column of each Postgres type
# (format_type's spelling, as include.contracts.target_columns gives it), and how its DDL spells it.
SCAFFOLD_TYPES = {
    "bigint": ("RecordId", "bigint"),
    "text": ("Text", "text"),
    "timestamp with time zone": ("Timestamp", "timestamptz"),
    "numeric(12,2)": ("Money", "numeric(12,2)"),
}


@dataclass(frozen=True)
class Column:
    name: str
    contract_type: str  # a type of include/contracts/__init__.py
    sql_type: str


@dataclass(frozen=True)
class DemoResource:
    """A resource of the demo upstream API: the fields its records carry, and its key."""

    key: tuple[str, ...]
    columns: tuple[Column, ...]


def demo_resource(resource: str) -> DemoResource:
    """What the repo's contract of `resource` (include/contracts/<resource>.py) declares: its target's
    columns in order, each as the shared type of its Postgres type, and its key."""
    module = contract_module(resource)
    declared = {column.name: column for column in target_columns(module.CONTRACT.model)}
    columns = []
    for name in module.TARGET.columns:
        sql_type = declared[name].sql_type
        if sql_type not in SCAFFOLD_TYPES:
            raise ValueError(
                f"include/contracts/{resource}.py: column {name} is {sql_type}, which the scaffold has no "
                f"shared type for; add it to SCAFFOLD_TYPES ({', '.join(SCAFFOLD_TYPES)})"
            )
        contract_type, ddl_type = SCAFFOLD_TYPES[sql_type]
        columns.append(Column(name, contract_type, ddl_type))
    return DemoResource(key=module.TARGET.key, columns=tuple(columns))


DEMO_RESOURCES = {resource: demo_resource(resource) for resource in RESOURCES}

DAG_FILE = '''"""Airflow DAG built from include/automations/<this file's name>.yaml: the YAML is the whole definition.

(The dag-processor only parses files that mention both "airflow" and "dag": this docstring does.)
"""

from batchkit.sync_dag import sync_dag

dag = sync_dag(__file__)
'''

SPEC_TEMPLATE = Template("""\
# Demo API $resource into $table, one day per run. Validated by batchkit.sync_spec.SyncSpec;
# built into a DAG by dags/$domain/$name.py. Catalog: docs/dags.md.
# Scaffolded by `make new-sync`: point `source` at the real system, then make the contract and the
# DDL match its records: include/contracts/$contract.py, include/sql/targets/$ddl_stem.sql.
dag_id: $name
description: Daily sync of the demo API's $resource changed that day into the warehouse table $table.
owner: $owner
tags: ["domain:$domain", "kind:sync", "tier:3"]
schedule:
  cron: "$cron"
  timezone: $timezone
  # Fixed and in the past, so `make dag-test DAG=$name DATE=$first_interval_end` (the first interval)
  # and any later date can be tested; catchup is off, so unpausing runs only the latest interval.
  start_date: $start_date
  catchup: false
  max_active_runs: 1
deadline_minutes: 60
retries: 3
alerts:
  webhook_conn_id: alerts_webhook
source:
  conn_id: demo_api
  endpoint: /v1/$resource
  pool: demo_api
  pagination: {style: page_number, page_param: page, size_param: page_size, page_size: 500, total_pages_field: total_pages, records_field: data}
  interval_params: {start: updated_since, end: updated_before}
  contract: $contract
target:
  # table and key: the contract's TARGET (include/contracts/$contract.py), $table on $key
  conn_id: warehouse
  pool: warehouse
  merge: upsert
  interval_column: $interval_column
quality:
  min_rows: 1
  max_staleness_hours: 6
max_quarantine_ratio: 0.05
runbook: |
  - `extract_stage` failed with HTTP 401/403: the `demo_api` token expired; rotate it (docs/operations.md).
  - `extract_stage` failed after retries with 429/5xx: the source is degraded; clear the task later,
    it resumes from its last committed page.
  - `verify_quarantine` failed: more than 5% of the records broke the contract
    (include/contracts/$contract.py). The records and their errors are in `batch_meta.quarantine`; fix
    the source (or the contract), then clear the run.
  - `check_rows_and_freshness` failed: the interval has no $resource, or the newest is more than 6 h
    older than the interval end; check the source's own export before clearing.
""")

CONTRACT_TEMPLATE = Template('''\
"""Demo API $resource (GET /v1/$resource), loaded into $table (include/sql/targets/$ddl_stem.sql).

Scaffolded by `make new-sync`: change the fields to what the real source sends and the warehouse needs,
and keep the DDL's columns in step with them (tests/batchkit/test_contracts.py compares the two).
"""

from __future__ import annotations

from batchkit.contracts import RecordContract
from batchkit.load import TargetSpec
from include.contracts import $contract_imports


class $model(SourceRecord):
$fields


CONTRACT = RecordContract(source="$contract", model=$model)
TARGET = TargetSpec(
    table="$table",
    ddl="sql/targets/$ddl_stem.sql",
    columns=tuple($model.model_fields),
    key=$key_tuple,
)
''')

DDL_TEMPLATE = Template("""\
-- Demo API $resource, one row per $key, kept current by upsert on $key.
-- Contract: include/contracts/$contract.py. Scaffolded by `make new-sync`.
CREATE SCHEMA IF NOT EXISTS $schema;

CREATE TABLE IF NOT EXISTS $table (
$columns
);
""")

TEST_TEMPLATE = Template('''\
"""The sync $name.

Its YAML validates, its DAG parses with the sync's tasks, and its DDL creates the table its contract loads.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import psycopg

from batchkit.load.postgres import prepare_staging
from batchkit.sync_spec import load_spec, spec_path
from tests.dagrun import parse_dag

DAG_ID = "$name"
DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "$domain" / f"{DAG_ID}.py"
SYNC_TASKS = $sync_tasks


def test_spec_loads() -> None:
    spec = load_spec(spec_path(DAG_ID))

    assert spec.dag_id == DAG_ID
    assert spec.target.table == "$table"


def test_dag_parses_with_the_sync_tasks() -> None:
    dag = parse_dag(DAG_FILE, DAG_ID)

    assert tuple(dag.task_ids) == SYNC_TASKS
    for upstream, downstream in pairwise(SYNC_TASKS):
        assert dag.get_task(upstream).downstream_task_ids == {downstream}


def test_ddl_creates_the_table_the_contract_loads(warehouse: psycopg.Connection) -> None:
    target = load_spec(spec_path(DAG_ID)).target_spec()

    # Applies the DDL, then fails naming the table if a contract column or the key's unique index is missing.
    staging = prepare_staging(warehouse, target, run_scope=f"{DAG_ID}:ddl-check")

    assert len(staging.column_types) == len(target.columns)
''')


@dataclass(frozen=True)
class Scaffold:
    name: str
    domain: str
    owner: str
    resource: str
    start_date: date

    @property
    def schema(self) -> str:
        return self.domain

    @property
    def table_name(self) -> str:
        return self.name.removeprefix(f"{self.domain}_").removesuffix("_sync") or self.name

    @property
    def table(self) -> str:
        return f"{self.schema}.{self.table_name}"

    @property
    def ddl_stem(self) -> str:
        return f"{self.schema}_{self.table_name}"

    @property
    def contract(self) -> str:
        """The contract module's name: the records it describes, named as the table is."""
        return self.table_name

    @property
    def demo(self) -> DemoResource:
        return DEMO_RESOURCES[self.resource]

    def files(self) -> dict[Path, str]:
        """Every file to write, by path relative to the repo root."""
        return {
            Path("include/automations", f"{self.name}.yaml"): self.spec_yaml(),
            Path("dags", self.domain, f"{self.name}.py"): DAG_FILE,
            Path("include/contracts", f"{self.contract}.py"): self.contract_py(),
            Path("include/sql/targets", f"{self.ddl_stem}.sql"): self.ddl_sql(),
            Path("tests/automations", f"test_{self.name}_spec.py"): self.test_py(),
        }

    def _fields(self) -> dict[str, str]:
        return {
            "name": self.name,
            "domain": self.domain,
            "owner": self.owner,
            "resource": self.resource,
            "schema": self.schema,
            "table": self.table,
            "ddl_stem": self.ddl_stem,
            "contract": self.contract,
            "key": ", ".join(self.demo.key),
            # Double quotes and the one-element comma, as ruff format writes a tuple.
            "key_tuple": "(" + ", ".join(f'"{column}"' for column in self.demo.key) + ",)"
            if len(self.demo.key) == 1
            else "(" + ", ".join(f'"{column}"' for column in self.demo.key) + ")",
            "interval_column": INTERVAL_COLUMN,
            "start_date": self.start_date.isoformat(),
            "cron": CRON,
            "timezone": TIMEZONE,
            "first_interval_end": self.first_interval_end.isoformat(),
        }

    @property
    def first_interval(self) -> tuple[datetime, datetime]:
        """The first data interval the DAG schedules: the first two cron ticks from start_date."""
        start = datetime(self.start_date.year, self.start_date.month, self.start_date.day, tzinfo=UTC)
        ticks = croniter(CRON, start - timedelta(microseconds=1))
        return ticks.get_next(datetime), ticks.get_next(datetime)

    @property
    def first_interval_end(self) -> datetime:
        """The logical date `airflow dags test` needs to run the first interval: Airflow infers a manual
        run's data interval as the one ending at (or before) it, and creates no task instance for a
        logical date before start_date."""
        return self.first_interval[1]

    def dag_test_command(self) -> str:
        return f"make dag-test DAG={self.name} DATE={self.first_interval_end.isoformat()}"

    def spec_yaml(self) -> str:
        return SPEC_TEMPLATE.substitute(self._fields())

    def contract_py(self) -> str:
        columns = self.demo.columns
        imports = sorted({column.contract_type for column in columns} | {"SourceRecord"})
        return CONTRACT_TEMPLATE.substitute(
            self._fields(),
            model="".join(part.capitalize() for part in self.table_name.split("_")) + "Record",
            contract_imports=", ".join(imports),
            fields="\n".join(f"    {column.name}: {column.contract_type}" for column in columns),
        )

    def ddl_sql(self) -> str:
        width = max(len(column.name) for column in self.demo.columns) + 2
        lines = []
        for column in self.demo.columns:
            constraint = "PRIMARY KEY" if self.demo.key == (column.name,) else "NOT NULL"
            lines.append(f"    {column.name.ljust(width)}{column.sql_type.ljust(15)}{constraint}".rstrip())
        if len(self.demo.key) > 1:
            lines.append(f"    PRIMARY KEY ({', '.join(self.demo.key)})")
        return DDL_TEMPLATE.substitute(self._fields(), columns=",\n".join(lines))

    def test_py(self) -> str:
        # Double quotes, as ruff format writes them: the generated file must pass `make lint` as is.
        quoted = ", ".join(f'"{task}"' for task in SYNC_TASKS)
        return TEST_TEMPLATE.substitute(self._fields(), sync_tasks=f"({quoted})")


def default_start_date(today: date) -> date:
    """The first day of the month START_DATE_LOOKBACK_DAYS before `today` (2026-12-06 -> 2026-11-01):
    fixed in the YAML, and far enough back that the last few weeks of intervals can be tested."""
    return (today - timedelta(days=START_DATE_LOOKBACK_DAYS)).replace(day=1)


def plan(name: str, *, domain: str | None, owner: str | None, resource: str, start_date: date) -> Scaffold:
    """The scaffold for NAME, after checking every input; ScaffoldError names what is wrong."""
    if not re.fullmatch(DAG_ID_PATTERN, name) or keyword.iskeyword(name):
        raise ScaffoldError(
            f"NAME {name!r} is not a valid dag_id: it must match {DAG_ID_PATTERN} (and not be a Python keyword)"
        )
    domain = domain or _domain_of(name)
    if domain not in DOMAINS:
        raise ScaffoldError(f"--domain {domain!r} is not a taxonomy domain; one of {', '.join(DOMAINS)}")
    owner = owner or f"{domain}-data"
    if not OWNER_PATTERN.fullmatch(owner):
        raise ScaffoldError(f"--owner {owner!r} must be a team handle matching {OWNER_PATTERN.pattern}")
    if resource not in DEMO_RESOURCES:
        raise ScaffoldError(
            f"--resource {resource!r} is not a demo API resource; one of {sorted(DEMO_RESOURCES)}"
        )
    scaffold = Scaffold(name=name, domain=domain, owner=owner, resource=resource, start_date=start_date)
    if not IDENTIFIER_PATTERN.fullmatch(scaffold.table_name) or keyword.iskeyword(scaffold.table_name):
        raise ScaffoldError(
            f"NAME {name!r} gives the table name {scaffold.table_name!r}, which does not match "
            f"{IDENTIFIER_PATTERN.pattern} or is a Python keyword (it names the contract module too); "
            f"choose a NAME like {domain}_<table>_sync"
        )
    _check_generated_spec(scaffold)
    return scaffold


def _domain_of(name: str) -> str:
    first_word = name.split("_", 1)[0]
    if first_word not in DOMAINS:
        raise ScaffoldError(
            f"NAME {name!r} does not start with a taxonomy domain ({', '.join(DOMAINS)}_...): pass --domain"
        )
    return first_word


def _check_generated_spec(scaffold: Scaffold) -> None:
    """The YAML must validate before anything is written (a bad --owner surfaces here)."""
    where = f"generated include/automations/{scaffold.name}.yaml"
    try:
        SyncSpec.model_validate(yaml.safe_load(scaffold.spec_yaml()))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ScaffoldError(f"{where} would not validate: {problems}") from None


def write(scaffold: Scaffold, root: Path) -> list[Path]:
    """Write the scaffold under `root`; refuses (writing nothing) if any file or a same-named DAG exists."""
    files = {root / relative: text for relative, text in scaffold.files().items()}
    taken = [path for path in files if path.exists()]
    taken += [path for path in sorted((root / "dags").rglob(f"{scaffold.name}.py")) if path not in files]
    if taken:
        listed = ", ".join(str(path.relative_to(root)) for path in taken)
        raise ScaffoldError(f"refusing to overwrite existing file(s): {listed}")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    # tests/ is a package tree: a folder without __init__.py would clash with same-named test modules.
    package_marker = root / "tests" / "automations" / "__init__.py"
    if not package_marker.exists():
        package_marker.write_text("", encoding="utf-8")
    return list(files)


def regenerate_catalog(root: Path) -> subprocess.CompletedProcess[str]:
    """`make catalog` for `root`: docs/dags.md from every DAG under root/dags, with root's own code.

    A subprocess, as the command runs it: tools.dag_catalog points Airflow at a throwaway home before
    Airflow is first imported, which this process cannot undo. Run from `root`, so `tools`, `batchkit`
    and `include` resolve to the repository the scaffold wrote into.
    """
    env = {**os.environ, "BATCHKIT_INCLUDE_DIR": str(root / "include")}
    env["PYTHONPATH"] = os.pathsep.join(str(path) for path in (root / "plugins", root / "config", root))
    return subprocess.run(
        [sys.executable, "-m", "tools.dag_catalog", "--root", str(root)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.new_sync", description=__doc__.splitlines()[0])
    parser.add_argument("name", metavar="NAME", help="the dag_id, e.g. sales_returns_sync")
    parser.add_argument("--domain", help=f"one of {', '.join(DOMAINS)} (default: NAME's first word)")
    parser.add_argument("--owner", help="the team that answers for it (default: <domain>-data)")
    parser.add_argument(
        "--resource", default="orders", help=f"demo API resource: {', '.join(DEMO_RESOURCES)}"
    )
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root to write into")
    parser.add_argument(
        "--no-catalog", action="store_true", help="do not regenerate docs/dags.md (`make catalog` does)"
    )
    args = parser.parse_args(argv)
    try:
        scaffold = plan(
            args.name,
            domain=args.domain,
            owner=args.owner,
            resource=args.resource,
            start_date=default_start_date(datetime.now(UTC).date()),
        )
        written = write(scaffold, args.root.resolve())
    except ScaffoldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    root = args.root.resolve()
    print(f"scaffolded sync {scaffold.name} (table {scaffold.table}, owner {scaffold.owner}):")
    for path in written:
        print(f"  {path.relative_to(root)}")
    status = EXIT_OK
    if not args.no_catalog:
        catalog = regenerate_catalog(root)
        if catalog.returncode == 0:
            print("  docs/dags.md (regenerated: the DAG catalog now lists it)")
        else:
            print(
                f"error: docs/dags.md was not regenerated (exit {catalog.returncode}); fix the error below, "
                f"then `make catalog`:\n{catalog.stdout[-2000:]}{catalog.stderr[-4000:]}",
                file=sys.stderr,
            )
            status = EXIT_CATALOG_FAILED
    start, end = scaffold.first_interval
    print(
        f"try it: `make run` (for the demo API), then\n"
        f"  {scaffold.dag_test_command()}\n"
        f"runs its first interval [{start.isoformat()}, {end.isoformat()}); any DATE from then on works.\n"
        "next: point `source` in the YAML at the real system, make the contract and DDL match its records,\n"
        "then `make test` (and `make catalog` again after changing the YAML), and open a pull request."
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
