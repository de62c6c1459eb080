"""Operator verbs over Airflow's public REST API v2: backfill, clear-failed, pause, unpause, import-errors.

Verbs that change something print what they would do first and act only with --execute.
Connection: AIRFLOW_API_URL (default http://localhost:$AIRFLOW_PORT, the port `make run` uses, else 8080),
AIRFLOW_USER (default admin), AIRFLOW_PASSWORD (default: the password `make run` generated, PASSWORDS_FILE).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tools.airflow_api import AirflowApi, AirflowApiError
from tools.airflow_env import ADMIN_USER
from tools.metadb import LOCAL_DIR

PASSWORDS_FILE = LOCAL_DIR / "airflow" / "simple_auth_manager_passwords.json.generated"
REPROCESS_BEHAVIORS = ("none", "completed", "failed")
EXIT_OK = 0
EXIT_FOUND_PROBLEMS = 1
EXIT_ERROR = 2

Print = Callable[[str], None]


class OpsError(RuntimeError):
    pass


def connect(env: Mapping[str, str], passwords_file: Path = PASSWORDS_FILE) -> AirflowApi:
    user = env.get("AIRFLOW_USER", ADMIN_USER)
    url = env.get("AIRFLOW_API_URL") or f"http://localhost:{env.get('AIRFLOW_PORT', '8080')}"
    return AirflowApi(url, user, _password(env, user, passwords_file))


def _password(env: Mapping[str, str], user: str, passwords_file: Path) -> str:
    if env.get("AIRFLOW_PASSWORD"):
        return env["AIRFLOW_PASSWORD"]
    if not passwords_file.exists():
        raise OpsError(
            f"AIRFLOW_PASSWORD is not set and {passwords_file} does not exist: "
            "start the local stack with `make run`, or set AIRFLOW_PASSWORD"
        )
    passwords = json.loads(passwords_file.read_text())
    if user not in passwords:
        raise OpsError(f"{passwords_file} has no password for user {user!r}; set AIRFLOW_PASSWORD")
    return passwords[user]


def parse_when(text: str) -> datetime:
    """An ISO date or datetime; without an offset it means UTC (Airflow's default timezone here)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO date or datetime (e.g. 2026-06-01 or 2026-06-01T13:00)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def error_headline(stack_trace: str) -> str:
    """The line that names an import error: the exception line of a traceback, else the first line."""
    lines = [line for line in stack_trace.splitlines() if line.strip()]
    if not lines:
        return "(empty error message)"
    if lines[0].startswith("Traceback"):
        unindented = [line for line in lines[1:] if not line.startswith((" ", "\t"))]
        if unindented:
            return unindented[-1]
    return lines[0]


def describe_task_instance(ti: Mapping[str, Any]) -> str:
    map_index = f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else ""
    return f"{ti['dag_run_id']}  {ti['task_id']}{map_index}  {ti['state']}  (try {ti['try_number']})"


def backfill(api: AirflowApi, args: argparse.Namespace, out: Print) -> int:
    body = {
        "dag_id": args.dag_id,
        "from_date": args.from_date.isoformat(),
        "to_date": args.to_date.isoformat(),
        "reprocess_behavior": args.reprocess,
        "max_active_runs": args.max_active_runs,
    }
    out(
        f"backfill {args.dag_id} from {body['from_date']} to {body['to_date']} "
        f"(reprocess={args.reprocess}, max_active_runs={args.max_active_runs}); asking for a dry run ..."
    )
    planned = api.backfill_dry_run(body)["backfills"]
    if not planned:
        out("nothing to backfill: no run due in that range (existing runs are kept, see --reprocess).")
        return EXIT_OK
    out(f"{len(planned)} run(s) would be created:")
    for run in planned:
        out(f"  {run['logical_date'] or run['partition_key']}")
    if not args.execute:
        out("dry run: nothing was created. Add --execute (make backfill ... EXECUTE=1) to create it.")
        return EXIT_OK
    out("creating the backfill ...")
    created = api.create_backfill(body)
    out(
        f"created backfill {created['id']} for {created['dag_id']}; follow it at GET /api/v2/backfills/{created['id']}"
    )
    if api.dag(args.dag_id)["is_paused"]:
        out(f"warning: {args.dag_id} is paused; its backfill runs start once it is unpaused (ops unpause).")
    return EXIT_OK


def clear_failed(api: AirflowApi, args: argparse.Namespace, out: Print) -> int:
    scope = f"run {args.run_id}" if args.run_id else "all runs"
    out(f"looking for failed task instances of {args.dag_id} ({scope}) ...")
    body: dict[str, Any] = {"only_failed": True, "include_downstream": True, "reset_dag_runs": True}
    if args.run_id:
        body["dag_run_id"] = args.run_id
    failed = api.clear_task_instances(args.dag_id, {**body, "dry_run": True})["task_instances"]
    if not failed:
        out("nothing to clear: no failed or upstream_failed task instances.")
        return EXIT_OK
    out(f"{len(failed)} task instance(s) in state failed or upstream_failed would be cleared:")
    for ti in failed:
        out(f"  {describe_task_instance(ti)}")
    if not args.execute:
        out("dry run: nothing was cleared. Add --execute (make clear-failed ... EXECUTE=1) to clear them.")
        return EXIT_OK
    out("clearing ...")
    # Naming the task ids the dry run showed keeps the cleared set to what was printed, and lets
    # include_downstream apply (the API ignores it without task_ids).
    task_ids = sorted({ti["task_id"] for ti in failed})
    cleared = api.clear_task_instances(args.dag_id, {**body, "dry_run": False, "task_ids": task_ids})
    out(f"cleared {len(cleared['task_instances'])} task instance(s); their runs are queued again.")
    if api.dag(args.dag_id)["is_paused"]:
        out(f"warning: {args.dag_id} is paused; the cleared tasks run once it is unpaused (ops unpause).")
    return EXIT_OK


def set_paused(paused: bool) -> Callable[[AirflowApi, argparse.Namespace, Print], int]:
    def verb(api: AirflowApi, args: argparse.Namespace, out: Print) -> int:
        out(f"{'pausing' if paused else 'unpausing'} {args.dag_id} ...")
        dag = api.set_paused(args.dag_id, paused)
        out(f"{dag['dag_id']} is now {'paused' if dag['is_paused'] else 'unpaused'}.")
        return EXIT_OK

    return verb


def import_errors(api: AirflowApi, args: argparse.Namespace, out: Print) -> int:
    out(f"listing import errors at {api.base_url} ...")
    errors = api.import_errors()
    if not errors:
        out("no import errors.")
        return EXIT_OK
    out(f"{len(errors)} file(s) failed to import:")
    for error in sorted(errors, key=lambda e: e["filename"]):
        out(f"  {error['filename']}: {error_headline(error['stack_trace'])}")
    return EXIT_FOUND_PROBLEMS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.ops",
        description=__doc__.split("\n\n")[0],
        epilog=f"PASSWORDS_FILE = {PASSWORDS_FILE}",
    )
    verbs = parser.add_subparsers(dest="verb", required=True)

    bf = verbs.add_parser("backfill", help="backfill a date range (dry run unless --execute)")
    bf.add_argument("dag_id")
    bf.add_argument(
        "--from", dest="from_date", metavar="DATE", type=parse_when, required=True, help="first logical date"
    )
    bf.add_argument(
        "--to",
        dest="to_date",
        metavar="DATE",
        type=parse_when,
        required=True,
        help="last logical date (included)",
    )
    bf.add_argument(
        "--reprocess",
        choices=REPROCESS_BEHAVIORS,
        default="none",
        help="none: only dates without a run; failed: also rerun failed runs; completed: rerun all",
    )
    bf.add_argument("--max-active-runs", type=positive_int, default=10, help="concurrent backfill runs")
    bf.add_argument("--execute", action="store_true", help="create the backfill (default: dry run)")
    bf.set_defaults(handler=backfill)

    cf = verbs.add_parser("clear-failed", help="clear failed tasks so they rerun (dry run unless --execute)")
    cf.add_argument("dag_id")
    cf.add_argument("--run-id", help="only this DAG run (default: every run of the DAG)")
    cf.add_argument("--execute", action="store_true", help="clear them (default: dry run)")
    cf.set_defaults(handler=clear_failed)

    for name, paused in (("pause", True), ("unpause", False)):
        verb = verbs.add_parser(name, help=f"{name} a DAG")
        verb.add_argument("dag_id")
        verb.set_defaults(handler=set_paused(paused))

    ie = verbs.add_parser("import-errors", help="list DAG files that failed to import (exit 1 if any)")
    ie.set_defaults(handler=import_errors)
    return parser


def main(argv: list[str] | None = None, env: Mapping[str, str] = os.environ) -> int:
    args = build_parser().parse_args(argv)
    if args.verb == "backfill" and args.from_date > args.to_date:
        print(
            f"error: --from {args.from_date.isoformat()} is after --to {args.to_date.isoformat()}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    try:
        return args.handler(connect(env), args, lambda line: print(line, flush=True))
    except (AirflowApiError, OpsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
