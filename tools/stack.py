"""The local Airflow stack behind `make run` / `make stop` / `make status`, also used by the e2e tests.

`run` picks the Postgres server (AIRFLOW__DATABASE__SQL_ALCHEMY_CONN, else an embedded Postgres in
.local/pgdata), gives the metadata and the warehouse database each a role of its own (tools.metadb:
Airflow's components log in as `airflow_metadata`, tasks as `warehouse_rw`), migrates, applies
airflow_settings.yaml, starts the api-server, scheduler, dag-processor and triggerer (LocalExecutor)
plus the demo upstream, all listening on 127.0.0.1 only (AIRFLOW_HOST opts out), waits until
/api/v2/monitor/health reports every component healthy, then supervises them in the foreground like a
service manager: a component that exits is restarted with exponential backoff once Postgres accepts
connections. Only Ctrl-C or `stop` end the stack; data in .local/ (0700) survives a restart. `status`
reports each component (pid, uptime, restarts, last exit code) from the status file the supervisor
keeps. `db-clean` runs `airflow db clean` as the metadata role: metadata retention is maintenance, not
a task, so no task ever holds metadata credentials.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import psycopg
from sqlalchemy.engine import make_url

from batchkit.queues import ALL_QUEUES
from tools.airflow_env import ADMIN_USER, DEFAULT_BIND_HOST, airflow_env
from tools.broker import DEFAULT_PORT as DEFAULT_BROKER_PORT
from tools.broker import EmbeddedRedis, flower_argv
from tools.metadb import (
    LOCAL_DIR,
    REPO_ROOT,
    DatabaseRole,
    EmbeddedPostgres,
    PgServer,
    provision_database,
)
from tools.private_files import ensure_private_dir, restrict_secret_file, write_secret_file

AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
HEALTH_KEYS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
RUN_DIR = LOCAL_DIR / "run"
SUPERVISOR_PID = RUN_DIR / "stack.pid"
RUN_STATUS_FILE = RUN_DIR / "status.json"
# Seconds between supervision passes: how late an exit is noticed.
SUPERVISE_INTERVAL = 1.0
DB_CLEAN_TIMEOUT = 1800.0
# Metadata older than this many days is what `db-clean` removes by default.
DB_CLEAN_DEFAULT_DAYS = 30
GENERATED_ENV = LOCAL_DIR / "generated.env"
# Secrets the stack needs that a fresh laptop does not have: generated once, kept in .local (0600).
GENERATED_SECRETS = (
    "DEMO_API_TOKEN",
    "METADATA_ROLE_PASSWORD",
    "WAREHOUSE_ROLE_PASSWORD",
    "CELERY_RESULTS_ROLE_PASSWORD",
    "BROKER_PASSWORD",
    "FLOWER_PASSWORD",
)
# Never exported to the environment every component (and so every task) inherits: each goes only into
# the one connection, URL or process that needs it.
PRIVATE_SECRETS = (
    "METADATA_ROLE_PASSWORD",
    "WAREHOUSE_ROLE_PASSWORD",
    "CELERY_RESULTS_ROLE_PASSWORD",
    "BROKER_PASSWORD",
    "FLOWER_PASSWORD",
)
METADATA_DB = "airflow"
METADATA_ROLE = "airflow_metadata"
WAREHOUSE_DB = "warehouse"
WAREHOUSE_ROLE = "warehouse_rw"
DEFAULT_WORKER_CONCURRENCY = 4
DEFAULT_FLOWER_PORT = 5555
CELERY_RESULTS_DB = "celery_results"
CELERY_RESULTS_ROLE = "celery_results"
# Read by config/worker_hostname.py: the hostname a worker records on its task instances.
WORKER_NAME_ENV = "BATCHKIT_WORKER_NAME"
# What .env.example holds where a real secret must go.
ENV_PLACEHOLDER = "change-me"


class StackError(RuntimeError):
    pass


@dataclass(frozen=True)
class RestartPolicy:
    """How long to wait before restarting a component that exited: doubling delays, as systemd does.

    The n-th exit in a row waits `first_delay * 2**(n-1)`, at most `max_delay`. A component that stayed up
    `stable_after` seconds counts as healthy again, so its next exit waits `first_delay` once more.
    """

    first_delay: float = 1.0
    max_delay: float = 30.0
    stable_after: float = 60.0

    def delay(self, consecutive_exits: int) -> float:
        return min(self.max_delay, self.first_delay * 2 ** (consecutive_exits - 1))


@dataclass
class DatabaseWatch:
    """Keeps the embedded Postgres of `make run` running: started again, with RestartPolicy's backoff,
    whenever it is found down (killed, crashed, stopped by hand). The components wait for it and are
    restarted by their own supervision once it answers again."""

    server: EmbeddedPostgres
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    restarts: int = 0
    consecutive_failures: int = 0
    next_attempt: float = 0.0

    def check(self) -> bool:
        """One pass; returns whether the server is running afterwards."""
        if self.server.is_running():
            self.consecutive_failures = 0
            return True
        if time.monotonic() < self.next_attempt:
            return False
        print(
            f"{_iso(time.time())} the embedded Postgres in {self.server.pgdata} is down; starting it",
            flush=True,
        )
        try:
            self.server.start()
        except Exception as error:  # a start that fails is retried after the backoff, never fatal
            self.consecutive_failures += 1
            delay = self.policy.delay(self.consecutive_failures)
            self.next_attempt = time.monotonic() + delay
            print(f"  start failed ({error}); trying again in {delay:.0f}s", flush=True)
            return False
        self.restarts += 1
        self.consecutive_failures = 0
        print(f"  embedded Postgres running again (restart {self.restarts})", flush=True)
        return True


@dataclass
class Process:
    """One supervised component: the running incarnation (`popen`) and its restart history."""

    name: str
    argv: list[str]
    log_path: Path
    # Set for this process only, over the stack's environment (a worker's name, Flower's login).
    env: Mapping[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None  # the current incarnation; its pid is its session id
    started_at: float | None = None  # wall clock, for the status file
    started_monotonic: float = 0.0  # for the uptime that decides the backoff
    restarts: int = 0
    last_exit_code: int | None = None  # negative: killed by that signal
    last_restart_at: float | None = None  # wall clock
    consecutive_exits: int = 0  # exits without a stable run in between: the backoff exponent
    restart_due: float | None = None  # time.monotonic() at which the exited component starts again

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def status(self) -> dict:
        return {
            "pid": self.popen.pid if self.popen else None,
            "state": "up" if self.running else "down",
            "started_at": _iso(self.started_at),
            "restarts": self.restarts,
            "last_exit_code": self.last_exit_code,
            "last_restart_at": _iso(self.last_restart_at),
        }


@dataclass(frozen=True)
class CeleryWorker:
    """One `airflow celery worker` process. Its name is the component's, the first part of its Celery node
    name (`worker1@<host>`) and the hostname Airflow records on the task instances it runs, so the UI
    tells two workers on one machine apart."""

    name: str
    queues: tuple[str, ...] = ALL_QUEUES

    def node_name(self) -> str:
        return f"{self.name}@{socket.gethostname()}"


@dataclass(frozen=True)
class CeleryCluster:
    """What the CeleryExecutor needs: a broker, a result backend and workers (docs/operations.md, "Sizing")."""

    broker_url: str
    result_backend: str  # a `db+postgresql...` URL: the task states the scheduler polls
    workers: tuple[CeleryWorker, ...]
    # Tasks one worker runs at once ([celery] worker_concurrency); pools and parallelism cap the cluster.
    concurrency: int = DEFAULT_WORKER_CONCURRENCY
    # The redis-server the stack runs itself when no broker is configured.
    embedded_broker: EmbeddedRedis | None = None
    flower_port: int | None = None
    flower_password: str | None = None

    def env(self) -> dict[str, str]:
        """For every component (the scheduler publishes to the broker and polls the result backend)."""
        return {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": self.result_backend,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.concurrency),
            # Sized together: below workers x concurrency, parallelism (not the workers) would be the cap.
            "AIRFLOW__CORE__PARALLELISM": os.environ.get(
                "AIRFLOW__CORE__PARALLELISM", str(max(8, len(self.workers) * self.concurrency))
            ),
            # A task nobody picked up (its message lost with a broker that had no disk) is queued again
            # after 2 min instead of Airflow's 10.
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": os.environ.get(
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT", "120"
            ),
        }

    def processes(self) -> dict[str, tuple[list[str], dict[str, str]]]:
        """Component name -> (argv, the environment of that process only)."""
        processes = {}
        for worker in self.workers:
            argv = [
                sys.executable, "-m", "airflow", "celery", "worker",
                "--celery-hostname", worker.node_name(),
                "--queues", ",".join(worker.queues),
                "--concurrency", str(self.concurrency),
                # Two workers on one machine would fight over the log server's port 8793, which binds
                # every interface; the api-server reads task logs from the shared base_log_folder.
                "--skip-serve-logs",
            ]  # fmt: skip
            processes[worker.name] = (
                argv,
                {
                    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "worker_hostname.hostname",
                    WORKER_NAME_ENV: worker.node_name(),
                },
            )
        if self.flower_port is not None:
            processes["flower"] = (
                flower_argv(self.flower_port),
                {"AIRFLOW__CELERY__FLOWER_BASIC_AUTH": f"{ADMIN_USER}:{self.flower_password}"},
            )
        return processes

    def responding_workers(self) -> set[str]:
        """Node names of the workers that answer a Celery ping now."""
        from celery import Celery

        app = Celery(broker=self.broker_url)
        try:
            replies = app.control.ping(timeout=2) or []
        except Exception:  # broker not reachable yet: nobody answers
            return set()
        finally:
            app.close()
        return {name for reply in replies for name in reply}


def parse_worker_queues(count: int, spec: str | None) -> tuple[CeleryWorker, ...]:
    """`count` workers; `spec` is space-separated comma lists handed out in turn ("source warehouse": the
    first worker takes `source`, the second `warehouse`, ...), or None for every queue on every worker."""
    if count < 1:
        raise StackError(f"WORKERS must be at least 1, got {count}")
    groups = [tuple(group.split(",")) for group in spec.split()] if spec else [ALL_QUEUES]
    unknown = sorted({q for group in groups for q in group} - set(ALL_QUEUES))
    if unknown:
        raise StackError(
            f"QUEUES: unknown queue(s) {unknown}; the library routes tasks to {list(ALL_QUEUES)}"
        )
    workers = tuple(CeleryWorker(f"worker{i + 1}", groups[i % len(groups)]) for i in range(count))
    unserved = sorted(set(ALL_QUEUES) - {q for w in workers for q in w.queues})
    if unserved:
        raise StackError(f"QUEUES leaves {unserved} without a worker: its tasks would wait forever")
    return workers


@dataclass
class AirflowStack:
    """A set of Airflow component processes sharing one AIRFLOW_HOME and metadata database.

    Each component runs in a session of its own; `stop()` ends every process of those sessions.

    Supervision (what `make run` does, and what tests get with `start(supervise=True)`): a component
    that exits, whatever its exit code, is restarted after a backoff (`restart_policy`), once Postgres
    accepts connections again (waiting at most `database_wait` seconds, then restarting anyway so the
    component's own log shows why it cannot start). A background thread checks every second;
    without it, call `supervise_once()` yourself. `stop()` ends the thread before the components, so no
    restart races the stop.

    Restart history, for tests and chaos experiments:
        stack.restart_counts()                      -> {"scheduler": 1, "api-server": 0, ...}
        stack.process("scheduler").restarts         -> 1
        stack.process("scheduler").last_exit_code   -> -9 (negative: killed by that signal)
        stack.process("scheduler").last_restart_at  -> wall-clock time of the last restart
        stack.process("scheduler").popen.pid        -> the current incarnation (= its session and group id)
    The same lands in `status_file` (JSON, rewritten atomically on every start, exit and restart),
    which `python -m tools.stack status --status-file ...` reports.
    """

    airflow_home: Path
    sql_alchemy_conn: str
    dags_folder: Path = REPO_ROOT / "dags"
    api_port: int = 8080
    # The api-server's address; the other components listen on nothing (see `start`).
    bind_host: str = DEFAULT_BIND_HOST
    extra_env: Mapping[str, str] = field(default_factory=dict)
    extra_processes: Mapping[str, list[str]] = field(default_factory=dict)
    # The `airflow <component>` commands to run; () leaves only `extra_processes`.
    components: tuple[str, ...] = AIRFLOW_COMPONENTS
    log_dir: Path | None = None
    status_path: Path | None = None  # default: `stack-status.json` in airflow_home
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    # CeleryExecutor with these workers (and broker, Flower); None: LocalExecutor.
    celery: CeleryCluster | None = None
    # Longest wait for Postgres before a (re)start: then start fails, and a restart goes ahead anyway.
    database_wait: float = 120.0
    processes: list[Process] = field(default_factory=list)
    _supervisor: threading.Thread | None = field(default=None, init=False, repr=False)
    _stop_supervising: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _database_down_since: float | None = field(default=None, init=False, repr=False)

    @property
    def env(self) -> dict[str, str]:
        return airflow_env(
            self.airflow_home,
            self.sql_alchemy_conn,
            dags_folder=self.dags_folder,
            api_port=self.api_port,
            bind_host=self.bind_host,
            extra={**(self.celery.env() if self.celery else {}), **self.extra_env},
        )

    @property
    def api_url(self) -> str:
        return f"http://localhost:{self.api_port}"

    @property
    def logs(self) -> Path:
        return self.log_dir or self.airflow_home / "component-logs"

    @property
    def status_file(self) -> Path:
        return self.status_path or self.airflow_home / "stack-status.json"

    @property
    def admin_password_file(self) -> Path:
        """SimpleAuthManager's password file (its default location, `[core] simple_auth_manager_passwords_file`)."""
        return self.airflow_home / "simple_auth_manager_passwords.json.generated"

    @property
    def supervised(self) -> bool:
        return self._supervisor is not None

    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run an `airflow` CLI command in this stack's environment, failing loudly with its output."""
        result = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise StackError(
                f"`airflow {' '.join(args)}` failed:\n{result.stdout[-2000:]}{result.stderr[-4000:]}"
            )
        return result

    def prepare(self, settings_file: Path | None = REPO_ROOT / "airflow_settings.yaml") -> None:
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        self.wait_for_database()
        self.airflow("db", "migrate")
        if settings_file is not None:
            result = subprocess.run(
                [sys.executable, "-m", "tools.airflow_settings", "apply", str(settings_file)],
                env=self.env,
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                raise StackError(f"applying {settings_file.name} failed:\n{result.stdout}{result.stderr}")

    def database_accepts_connections(self) -> bool:
        server, database = PgServer.from_url(self.sql_alchemy_conn)
        try:
            with psycopg.connect(server.conninfo(database), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    def wait_for_database(self) -> None:
        """Return once Postgres accepts connections (it may be starting or in crash recovery)."""
        deadline = time.monotonic() + self.database_wait
        if self.database_accepts_connections():
            return
        _announce(f"waiting up to {self.database_wait:.0f}s for Postgres to accept connections ...")
        while time.monotonic() < deadline:
            time.sleep(1)
            if self.database_accepts_connections():
                _announce("Postgres accepts connections.")
                return
        raise StackError(f"Postgres did not accept connections within {self.database_wait:.0f}s")

    def start(self, *, supervise: bool = False) -> None:
        """Start every component; with `supervise`, a background thread restarts those that exit."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.wait_for_database()
        argvs = {c: [sys.executable, "-m", "airflow", c] for c in self.components}
        if "api-server" in argvs:
            self.ensure_admin_password()
            argvs["api-server"] += ["--host", self.bind_host, "--port", str(self.api_port)]
        # The worker and trigger log servers (8793, 8794) bind every interface, and Airflow 3.3 has no
        # setting for their address. They only serve logs to an api-server on another machine: this one
        # reads the task and trigger log files from the shared base_log_folder instead.
        for component in ("scheduler", "triggerer"):
            if component in argvs:
                argvs[component].append("--skip-serve-logs")
        argvs.update(self.extra_processes)
        env = self.env
        if self.celery is not None and self.celery.embedded_broker is not None:
            # First: the scheduler publishes to it as soon as it runs.
            self._add_process(
                Process("broker", self.celery.embedded_broker.argv(), self.logs / "broker.log"), env
            )
            self.celery.embedded_broker.wait_ready()
        for name, argv in argvs.items():
            self._add_process(Process(name, argv, self.logs / f"{name}.log"), env)
        if self.celery is not None:
            for name, (argv, own_env) in self.celery.processes().items():
                self._add_process(Process(name, argv, self.logs / f"{name}.log", env=own_env), env)
        self._write_status()
        if supervise:
            self._stop_supervising.clear()
            self._supervisor = threading.Thread(
                target=self._supervise_forever, name="stack-supervisor", daemon=True
            )
            self._supervisor.start()

    def _add_process(self, proc: Process, env: Mapping[str, str]) -> None:
        self._launch(proc, env)
        self.processes.append(proc)

    def _launch(self, proc: Process, env: Mapping[str, str]) -> None:
        with proc.log_path.open("ab") as log:
            # A session of its own, so stopping the component also reaches its children (gunicorn/uvicorn
            # workers, LocalExecutor workers, task supervisors and the task processes they put in process
            # groups of their own).
            proc.popen = subprocess.Popen(
                proc.argv,
                env={**env, **proc.env},
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc.started_at = time.time()
        proc.started_monotonic = time.monotonic()

    def _supervise_forever(self) -> None:
        while not self._stop_supervising.wait(SUPERVISE_INTERVAL):
            try:
                self.supervise_once()
            except Exception:
                # The supervisor must outlive a failed pass (a full disk, a Popen error): the next pass
                # tries again, and the traceback says what went wrong.
                _announce(f"supervisor pass failed:\n{traceback.format_exc()}")

    def supervise_once(self) -> None:
        """One supervision pass: note components that exited, and restart those whose backoff is over."""
        now = time.monotonic()
        changed = False
        for proc in self.processes:
            if proc.popen is None or proc.running or proc.restart_due is not None:
                continue
            self._schedule_restart(proc, now)
            changed = True
        due = [p for p in self.processes if p.restart_due is not None and p.restart_due <= now]
        if due and self._database_still_down([p.name for p in due], now):
            due = []
        if due:
            env = self.env
            for proc in due:
                self._restart(proc, env)
            changed = True
        if changed:
            self._write_status()

    def _schedule_restart(self, proc: Process, now: float) -> None:
        assert proc.popen is not None
        uptime = now - proc.started_monotonic
        if uptime >= self.restart_policy.stable_after:
            proc.consecutive_exits = 0
        proc.consecutive_exits += 1
        proc.last_exit_code = proc.popen.returncode
        delay = self.restart_policy.delay(proc.consecutive_exits)
        proc.restart_due = now + delay
        self._record(
            proc,
            f"{proc.name} (pid {proc.popen.pid}) exited with code {proc.last_exit_code} after {uptime:.0f}s; "
            f"restarting in {delay:g}s",
        )
        # What the component left behind (task supervisors, executor workers) gets a chance to end
        # cleanly until the restart, which kills the rest: an orphan must not run beside its successor.
        _signal_session(proc.popen.pid, signal.SIGTERM)

    def _database_still_down(self, waiting: list[str], now: float) -> bool:
        """True while Postgres refuses connections and the bounded wait for it is not over."""
        if self.database_accepts_connections():
            if self._database_down_since is not None:
                _announce("Postgres accepts connections again.")
                self._database_down_since = None
            return False
        if self._database_down_since is None:
            self._database_down_since = now
            _announce(
                f"Postgres does not accept connections; waiting up to {self.database_wait:.0f}s "
                f"before restarting {', '.join(waiting)}"
            )
        if now - self._database_down_since < self.database_wait:
            return True
        _announce(
            f"Postgres still down after {self.database_wait:.0f}s; restarting {', '.join(waiting)} anyway"
        )
        return False

    def _restart(self, proc: Process, env: Mapping[str, str]) -> None:
        assert proc.popen is not None
        _end_session(proc.popen.pid)
        proc.restarts += 1
        proc.last_restart_at = time.time()
        proc.restart_due = None
        self._launch(proc, env)
        self._record(proc, f"restarted {proc.name} (restart {proc.restarts}, new pid {proc.popen.pid})")

    def _record(self, proc: Process, message: str) -> None:
        """Print a supervision event and append it to the component's own log, where its crash is."""
        _announce(message)
        with proc.log_path.open("a") as log:
            log.write(f"--- {_iso(time.time())} stack supervisor: {message}\n")

    def _write_status(self) -> None:
        status = {
            "supervisor_pid": os.getpid(),
            "api_url": self.api_url,
            "written_at": _iso(time.time()),
            "components": {p.name: p.status() for p in self.processes},
        }
        self.status_file.parent.mkdir(parents=True, exist_ok=True)
        # Write-then-rename: `status` never reads a half-written file.
        partial = self.status_file.with_name(f".{self.status_file.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(status, indent=2) + "\n")
        os.replace(partial, self.status_file)

    def process(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)

    def restart_counts(self) -> dict[str, int]:
        return {p.name: p.restarts for p in self.processes}

    def wait_healthy(self, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        last: dict | str = "no answer yet"
        while time.monotonic() < deadline:
            if not self.supervised:
                self._raise_if_exited()
            try:
                with urllib.request.urlopen(f"{self.api_url}/api/v2/monitor/health", timeout=5) as resp:
                    last = json.load(resp)
                if all((last.get(k) or {}).get("status") == "healthy" for k in HEALTH_KEYS):
                    missing = self._silent_workers()
                    if not missing:
                        return last
                    last = {**last, "celery workers not answering": sorted(missing)}
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError) as exc:
                last = repr(exc)
            time.sleep(1)
        raise StackError(f"stack not healthy after {timeout:.0f}s; last health: {last}\n{self.log_tails()}")

    def _silent_workers(self) -> set[str]:
        if self.celery is None:
            return set()
        return {w.node_name() for w in self.celery.workers} - self.celery.responding_workers()

    def _raise_if_exited(self) -> None:
        dead = [p for p in self.processes if p.popen is not None and not p.running]
        if dead:
            names = ", ".join(f"{p.name} (exit {p.popen.returncode})" for p in dead if p.popen)
            raise StackError(f"component(s) exited: {names}\n{self.log_tails()}")

    def log_tails(self, lines: int = 25) -> str:
        parts = []
        for proc in self.processes:
            if proc.log_path.exists():
                tail = proc.log_path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {proc.log_path} (last {lines} lines)\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self, grace: float = 20) -> None:
        """Stop supervising, then every component: SIGTERM, SIGKILL after `grace`, then their sessions."""
        if self._supervisor is not None:
            self._stop_supervising.set()
            self._supervisor.join()
            self._supervisor = None
        for proc in self.processes:
            if proc.running:
                _signal_group(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.processes:
            if proc.popen is None:
                continue
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()
            # Children that outlived their parent (task supervisors, task processes in groups of their
            # own) are still in the component's session.
            _end_session(proc.popen.pid)
        self._write_status()

    def ensure_admin_password(self) -> bool:
        """Give the admin a password before the api-server starts; True if one was generated now.

        The api-server generates a missing one itself, but prints it into its log and creates the file
        with the umask's mode (0644). Written here (0600, atomically), the api-server finds the user and
        neither generates nor prints anything.
        """
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        path = self.admin_password_file
        passwords = json.loads(path.read_text() or "{}") if path.exists() else {}
        if ADMIN_USER in passwords:
            restrict_secret_file(path)
            return False
        passwords[ADMIN_USER] = secrets.token_urlsafe(16)
        write_secret_file(path, json.dumps(passwords) + "\n")
        return True

    def admin_password(self) -> str:
        return json.loads(self.admin_password_file.read_text())[ADMIN_USER]


def session_processes(session_id: int) -> list[psutil.Process]:
    """Live (not zombie) processes of a session; a component's session id is its first pid."""
    members = []
    for candidate in psutil.process_iter(["status"]):
        with contextlib.suppress(ProcessLookupError, PermissionError, psutil.Error):
            if os.getsid(candidate.pid) == session_id and candidate.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(candidate)
    return members


def _signal_session(session_id: int, sig: signal.Signals) -> None:
    for member in session_processes(session_id):
        with contextlib.suppress(psutil.Error):
            member.send_signal(sig)


def _end_session(session_id: int, timeout: float = 10) -> None:
    """SIGKILL every process left in a session and wait until none is alive."""
    deadline = time.monotonic() + timeout
    while (members := session_processes(session_id)) and time.monotonic() < deadline:
        for member in members:
            with contextlib.suppress(psutil.Error):
                member.kill()
        psutil.wait_procs(members, timeout=1)


def _stop_sessions(session_ids: list[int], grace: float = 20) -> None:
    """SIGTERM every process of the sessions, then SIGKILL what is left after `grace`."""
    for session_id in session_ids:
        _signal_session(session_id, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(session_processes(s) for s in session_ids) and time.monotonic() < deadline:
        time.sleep(0.5)
    for session_id in session_ids:
        _end_session(session_id)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _announce(message: str) -> None:
    print(f"[{datetime.now().astimezone():%H:%M:%S}] {message}", flush=True)


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def load_env_files() -> dict[str, str]:
    """`.env` (the user's, optional) then generated secrets; real environment variables win.

    Generates the missing secrets into GENERATED_ENV. Exports everything except the database role
    passwords, which it returns instead.
    """
    from dotenv import dotenv_values

    values: dict[str, str | None] = {}
    for path in (REPO_ROOT / ".env", GENERATED_ENV):
        if path.exists():
            values.update(dotenv_values(path))
    placeholders = sorted(k for k, v in values.items() if v == ENV_PLACEHOLDER and k not in os.environ)
    if placeholders:
        raise StackError(
            f"{REPO_ROOT / '.env'} still has the placeholder {ENV_PLACEHOLDER!r} for {placeholders}: "
            "fill them in (see the comments in .env.example) or delete those lines to use the defaults"
        )
    generated = {
        key: secrets.token_urlsafe(24)
        for key in GENERATED_SECRETS
        if not (os.environ.get(key) or values.get(key))
    }
    if generated:
        kept = GENERATED_ENV.read_text().rstrip("\n") + "\n" if GENERATED_ENV.exists() else ""
        write_secret_file(
            GENERATED_ENV, kept + "".join(f"{key}={value}\n" for key, value in generated.items())
        )
        values.update(generated)
    elif GENERATED_ENV.exists():
        restrict_secret_file(GENERATED_ENV)
    for key, value in values.items():
        if value is not None and key not in PRIVATE_SECRETS:
            os.environ.setdefault(key, value)
    return {key: os.environ.get(key) or values[key] for key in PRIVATE_SECRETS}


@dataclass(frozen=True)
class StackDatabases:
    """Where `make run`'s components and tasks connect, each as its own role."""

    sql_alchemy_conn: str  # the metadata DB as `airflow_metadata`: Airflow's components only
    warehouse: dict[str, str]  # WAREHOUSE_* for airflow_settings.yaml's `warehouse` connection (tasks)
    embedded: EmbeddedPostgres | None  # the embedded server, when no server is configured
    admin: PgServer  # the superuser this tooling provisions with (never given to a component)


def choose_database(private_secrets: Mapping[str, str]) -> StackDatabases:
    """Pick the server and give each database its role (tools.metadb.provision_database).

    The configured server's URL (AIRFLOW__DATABASE__SQL_ALCHEMY_CONN) or the embedded server's
    `postgres` is the superuser this tooling creates the roles with; no component gets it.
    """
    configured = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    embedded = None
    if configured:
        if configured.startswith("sqlite"):
            raise StackError(
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN points at SQLite; this stack needs Postgres."
            )
        admin, metadata_db = PgServer.from_url(configured)
        print(f"Postgres: {_redact(configured)} (from AIRFLOW__DATABASE__SQL_ALCHEMY_CONN)")
    else:
        embedded = EmbeddedPostgres(LOCAL_DIR / "pgdata")
        print(f"Postgres: embedded, data in {embedded.pgdata}")
        admin, metadata_db = embedded.start(), METADATA_DB
    _require_superuser(admin, configured)
    metadata_role = DatabaseRole(METADATA_ROLE, private_secrets["METADATA_ROLE_PASSWORD"])
    provision_database(admin, metadata_db, metadata_role)
    if configured:
        # Everything else in the configured URL (driver, host, query options such as sslmode) stays.
        url = make_url(configured).set(username=metadata_role.name, password=metadata_role.password)
        sql_alchemy_conn = url.render_as_string(hide_password=False)
    else:
        sql_alchemy_conn = admin.as_role(metadata_role).sqlalchemy_url(metadata_db)
    print(f"metadata DB: {metadata_db} (role {METADATA_ROLE})")
    return StackDatabases(sql_alchemy_conn, warehouse_env(admin, private_secrets), embedded, admin)


def _require_superuser(admin: PgServer, configured: str | None) -> None:
    with psycopg.connect(admin.conninfo("postgres"), connect_timeout=10) as conn:
        is_superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[
            0
        ]
    if not is_superuser:
        raise StackError(
            f"{_redact(configured or admin.sqlalchemy_url('postgres'))}: role {admin.user!r} is not a superuser. "
            "make run uses this role only to create the roles "
            f"{METADATA_ROLE!r} and {WAREHOUSE_ROLE!r} and give each its database; Airflow and the tasks "
            "never get it. Point AIRFLOW__DATABASE__SQL_ALCHEMY_CONN at a superuser (see README.md)."
        )


def warehouse_env(admin: PgServer, private_secrets: Mapping[str, str]) -> dict[str, str]:
    """WAREHOUSE_* for airflow_settings.yaml: the user's if WAREHOUSE_HOST is set, else database
    `warehouse` on the same server, owned by and reached as `warehouse_rw`."""
    if "WAREHOUSE_HOST" in os.environ:
        print(f"warehouse DB: {os.environ['WAREHOUSE_HOST']} (from WAREHOUSE_*)")
        keys = ("WAREHOUSE_HOST", "WAREHOUSE_PORT", "WAREHOUSE_USER", "WAREHOUSE_PASSWORD", "WAREHOUSE_DB")
        return {key: os.environ.get(key, "") for key in keys}
    role = DatabaseRole(WAREHOUSE_ROLE, private_secrets["WAREHOUSE_ROLE_PASSWORD"])
    server = provision_database(admin, WAREHOUSE_DB, role)
    print(f"warehouse DB: {WAREHOUSE_DB} (role {WAREHOUSE_ROLE})")
    return {
        "WAREHOUSE_HOST": server.host,
        "WAREHOUSE_PORT": str(server.port),
        "WAREHOUSE_USER": server.user,
        "WAREHOUSE_PASSWORD": server.password or "",
        "WAREHOUSE_DB": WAREHOUSE_DB,
    }


def migrate_warehouse(warehouse: Mapping[str, str]) -> None:
    """The warehouse's control tables to this code's version (batchkit.migrations, include/sql/migrations),
    as the warehouse role, which owns its database (`make migrate` does the same by hand)."""
    from psycopg.conninfo import make_conninfo

    from tools.migrate import migrate_conninfo

    migrate_conninfo(
        make_conninfo(
            host=warehouse["WAREHOUSE_HOST"],
            port=warehouse["WAREHOUSE_PORT"] or "5432",
            user=warehouse["WAREHOUSE_USER"],
            password=warehouse["WAREHOUSE_PASSWORD"],
            dbname=warehouse["WAREHOUSE_DB"],
        ),
        label=f"warehouse DB {warehouse['WAREHOUSE_DB']}",
    )


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def demo_upstream_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "tools.demo_upstream", "--host", "127.0.0.1", "--port", str(port)]


@dataclass(frozen=True)
class ExecutorChoice:
    """`make run EXECUTOR=celery WORKERS=2 QUEUES=.. FLOWER=1`: how tasks are executed."""

    executor: str = "local"
    workers: int = 2
    queues: str | None = None
    flower: bool = False


def celery_cluster(
    choice: ExecutorChoice, admin: PgServer, private_secrets: Mapping[str, str]
) -> CeleryCluster:
    """The broker (AIRFLOW__CELERY__BROKER_URL, else a redis-server of the stack's own in .local/redis),
    the result backend (database `celery_results` on the metadata server, its own role) and the workers."""
    workers = parse_worker_queues(choice.workers, choice.queues)
    configured_broker = os.environ.get("AIRFLOW__CELERY__BROKER_URL")
    embedded_broker = None
    if configured_broker:
        broker_url = configured_broker
        print(f"Celery broker: {_redact(configured_broker)} (from AIRFLOW__CELERY__BROKER_URL)")
    else:
        embedded_broker = EmbeddedRedis(
            LOCAL_DIR / "redis",
            private_secrets["BROKER_PASSWORD"],
            int(os.environ.get("BROKER_PORT", DEFAULT_BROKER_PORT)),
        )
        broker_url = embedded_broker.url
        print(
            f"Celery broker: embedded redis-server on 127.0.0.1:{embedded_broker.port}, data in {embedded_broker.data_dir}"
        )
    role = DatabaseRole(CELERY_RESULTS_ROLE, private_secrets["CELERY_RESULTS_ROLE_PASSWORD"])
    server = provision_database(admin, CELERY_RESULTS_DB, role)
    print(
        f"Celery results: database {CELERY_RESULTS_DB} (role {CELERY_RESULTS_ROLE}); workers: "
        + ", ".join(f"{w.name} ({','.join(w.queues)})" for w in workers)
    )
    return CeleryCluster(
        broker_url=broker_url,
        result_backend="db+" + server.sqlalchemy_url(CELERY_RESULTS_DB),
        workers=workers,
        concurrency=int(os.environ.get("WORKER_CONCURRENCY", DEFAULT_WORKER_CONCURRENCY)),
        embedded_broker=embedded_broker,
        flower_port=int(os.environ.get("FLOWER_PORT", DEFAULT_FLOWER_PORT)) if choice.flower else None,
        flower_password=private_secrets["FLOWER_PASSWORD"],
    )


def run(choice: ExecutorChoice = ExecutorChoice()) -> int:
    ensure_private_dir(LOCAL_DIR)
    private_secrets = load_env_files()
    if SUPERVISOR_PID.exists() and _pid_running(int(SUPERVISOR_PID.read_text())):
        raise StackError(
            f"a stack is already running (pid {SUPERVISOR_PID.read_text().strip()}); `make stop` first"
        )
    databases = choose_database(private_secrets)
    embedded = databases.embedded
    celery = celery_cluster(choice, databases.admin, private_secrets) if choice.executor == "celery" else None
    api_port = int(os.environ.get("AIRFLOW_PORT", "8080"))
    demo_port = int(os.environ.get("DEMO_API_PORT", "8081"))
    bind_host = os.environ.get("AIRFLOW_HOST", DEFAULT_BIND_HOST)
    if bind_host != DEFAULT_BIND_HOST:
        print(
            f"AIRFLOW_HOST={bind_host}: the api-server (UI, REST API, task execution API) accepts connections "
            "from other machines; anyone who can reach it can try the admin password.",
            flush=True,
        )
    extra_env = {
        **databases.warehouse,
        "DEMO_API_URL": os.environ.get("DEMO_API_URL", f"http://127.0.0.1:{demo_port}"),
        "ALERTS_WEBHOOK_URL": os.environ.get("ALERTS_WEBHOOK_URL", f"http://127.0.0.1:{demo_port}/alerts"),
        # Reports go to their own inbox, never the alerts one; the files under .local/airflow/reports.
        "REPORTS_WEBHOOK_URL": os.environ.get("REPORTS_WEBHOOK_URL", f"http://127.0.0.1:{demo_port}/reports"),
        "REPORTS_BASE_PATH": os.environ.get(
            "REPORTS_BASE_PATH", f"file://{(LOCAL_DIR / 'airflow' / 'reports').resolve()}"
        ),
    }
    stack = AirflowStack(
        airflow_home=LOCAL_DIR / "airflow",
        sql_alchemy_conn=databases.sql_alchemy_conn,
        api_port=api_port,
        bind_host=bind_host,
        extra_env=extra_env,
        extra_processes={"demo-upstream": demo_upstream_argv(demo_port)},
        log_dir=LOCAL_DIR / "logs",
        status_path=RUN_STATUS_FILE,
        celery=celery,
    )
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    SUPERVISOR_PID.write_text(str(os.getpid()))
    try:
        t0 = time.monotonic()
        # Before any component starts: tasks only check the control tables' version, never create them.
        migrate_warehouse(databases.warehouse)
        print("migrating the metadata DB and applying airflow_settings.yaml ...", flush=True)
        stack.prepare()
        # Shown once, on this terminal only (never in .local/logs); afterwards the file holds it.
        new_password = stack.ensure_admin_password()
        extras = ["demo-upstream"] + ([*celery.processes()] if celery else [])
        print(
            f"starting {', '.join(AIRFLOW_COMPONENTS)}, {', '.join(extras)}; logs in {stack.logs}", flush=True
        )
        stack.start(supervise=True)
        stack.wait_healthy()
        login = f"{ADMIN_USER} / {stack.admin_password()}" if new_password else f"{ADMIN_USER}, password in"
        print(
            f"\nAirflow is up in {time.monotonic() - t0:.0f}s.\n"
            f"  UI:       {stack.api_url}\n"
            f"  login:    {login}\n"
            f"            {stack.admin_password_file} (mode 0600)\n"
            f"  demo API: http://127.0.0.1:{demo_port}\n"
            f"{_celery_summary(celery)}"
            f"  logs:     {stack.logs}  (task logs: {stack.airflow_home / 'logs'})\n"
            "A component that exits is restarted (printed here and in its log); `make status` shows them.\n"
            "Ctrl-C or `make stop` stops everything.",
            flush=True,
        )
        database_watch = DatabaseWatch(embedded) if embedded is not None else None
        while not stopping:
            if database_watch is not None:
                database_watch.check()
            time.sleep(1)
        return 0
    finally:
        print("stopping the stack ...", flush=True)
        stack.stop()
        if embedded is not None:
            embedded.stop()
        RUN_STATUS_FILE.unlink(missing_ok=True)
        SUPERVISOR_PID.unlink(missing_ok=True)
        print("stopped.", flush=True)


def _celery_summary(celery: CeleryCluster | None) -> str:
    if celery is None:
        return "  executor: LocalExecutor (`make run EXECUTOR=celery` for Celery workers)\n"
    lines = [
        f"  executor: CeleryExecutor, broker {_redact(celery.broker_url)}",
        *(
            f"  {w.name}:  {w.node_name()}, queues {','.join(w.queues)}, concurrency {celery.concurrency}"
            for w in celery.workers
        ),
    ]
    if celery.flower_port is not None:
        lines.append(
            f"  Flower:   http://127.0.0.1:{celery.flower_port} ({ADMIN_USER}, FLOWER_PASSWORD in {GENERATED_ENV})"
        )
    return "\n".join(lines) + "\n"


def stop(timeout: float = 60) -> int:
    if not SUPERVISOR_PID.exists():
        print("no stack is running.")
        return 0
    pid = int(SUPERVISOR_PID.read_text())
    if _pid_running(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_running(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if _pid_running(pid):
            print(f"stack supervisor {pid} did not stop within {timeout:.0f}s", file=sys.stderr)
            return 1
        if not SUPERVISOR_PID.exists():  # the supervisor stopped everything and cleaned up
            print("stack stopped.")
            return 0
    # The supervisor died without cleaning up (kill -9): its components run on, each in its session.
    if RUN_STATUS_FILE.exists():
        components = json.loads(RUN_STATUS_FILE.read_text())["components"].values()
        _stop_sessions([c["pid"] for c in components if c["pid"] is not None])
        RUN_STATUS_FILE.unlink()
    embedded = EmbeddedPostgres(LOCAL_DIR / "pgdata")
    if embedded.is_running():
        embedded.stop()
    SUPERVISOR_PID.unlink()
    print(f"supervisor {pid} was gone; stopped what it left running.")
    return 0


def db_clean(days: int, *, execute: bool) -> int:
    """`airflow db clean` of what is older than `days`, as the metadata role; a dry run unless `execute`.

    Maintenance run by the operator, not a task: tasks never hold metadata DB credentials. Starts the
    embedded server if `make run` is not running, and stops it again afterwards.
    """
    ensure_private_dir(LOCAL_DIR)
    private_secrets = load_env_files()
    embedded_was_running = EmbeddedPostgres(LOCAL_DIR / "pgdata").is_running()
    databases = choose_database(private_secrets)
    before = datetime.now(UTC) - timedelta(days=days)
    command = ["db", "clean", "--clean-before-timestamp", before.isoformat(timespec="seconds")]
    command += ["--skip-archive", "--yes", "--error-on-cleanup-failure"]
    if not execute:
        command.append("--dry-run")
    print(f"airflow {' '.join(command)}", flush=True)
    stack = AirflowStack(airflow_home=LOCAL_DIR / "airflow", sql_alchemy_conn=databases.sql_alchemy_conn)
    try:
        print(stack.airflow(*command, timeout=DB_CLEAN_TIMEOUT).stdout, flush=True)
    finally:
        if databases.embedded is not None and not embedded_was_running:
            databases.embedded.stop()
    if not execute:
        print("dry run: nothing was deleted; add EXECUTE=1 (--execute) to delete.")
    return 0


def _pid_running(pid: int | None) -> bool:
    """Alive and not a zombie: a killed process stays a zombie until its parent (maybe init) reaps it."""
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def status(status_file: Path = RUN_STATUS_FILE) -> int:
    """Print each component from the supervisor's status file: 0 all up, 1 any down, 2 no stack."""
    if not status_file.exists():
        print(f"no stack is running (no {status_file}).")
        return 2
    recorded = json.loads(status_file.read_text())
    if not _pid_running(recorded["supervisor_pid"]):
        print(
            f"no stack is running: its supervisor (pid {recorded['supervisor_pid']}) is gone; "
            "`make stop` ends what it may have left running."
        )
        return 2
    now = time.time()
    print(f"{'component':<15} {'pid':>7}  {'state':<5} {'uptime':>9} {'restarts':>8}  last exit")
    all_up = True
    for name, component in recorded["components"].items():
        # The file is rewritten on every exit and restart; the pid check covers the second in between.
        up = component["state"] == "up" and _pid_running(component["pid"])
        all_up = all_up and up
        started = component["started_at"]
        uptime = _duration(now - datetime.fromisoformat(started).timestamp()) if up and started else "-"
        last_exit = component["last_exit_code"]
        print(
            f"{name:<15} {component['pid'] or '-':>7}  {'up' if up else 'down':<5} {uptime:>9} "
            f"{component['restarts']:>8}  {_describe_exit(last_exit)}"
        )
    print(f"health ({recorded['api_url']}/api/v2/monitor/health): {_health_summary(recorded['api_url'])}")
    return 0 if all_up else 1


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "-"
    if code < 0:
        return f"{code} ({signal.Signals(-code).name})"
    return str(code)


def _health_summary(api_url: str) -> str:
    try:
        with urllib.request.urlopen(f"{api_url}/api/v2/monitor/health", timeout=5) as resp:
            health = json.load(resp)
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError) as exc:
        return f"API not answering ({exc})"
    return ", ".join(f"{key} {(health.get(key) or {}).get('status', 'unknown')}" for key in HEALTH_KEYS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "stop", "status", "db-clean"])
    parser.add_argument(
        "--status-file", type=Path, default=RUN_STATUS_FILE, help="for `status`: the stack to report on"
    )
    parser.add_argument(
        "--days",
        type=int,
        default=DB_CLEAN_DEFAULT_DAYS,
        help="for `db-clean`: remove Airflow metadata (runs, task instances, logs, XComs...) older than this",
    )
    parser.add_argument("--execute", action="store_true", help="for `db-clean`: delete (default: dry run)")
    parser.add_argument(
        "--executor",
        choices=["local", "celery"],
        default="local",
        help="for `run`: LocalExecutor or CeleryExecutor",
    )
    parser.add_argument("--workers", type=int, default=2, help="for `run --executor celery`: Celery workers")
    parser.add_argument(
        "--queues",
        help="for `run --executor celery`: queues per worker, handed out in turn (`source warehouse`); default all",
    )
    parser.add_argument(
        "--flower", action="store_true", help="for `run --executor celery`: Flower on 127.0.0.1"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "status":
            return status(args.status_file)
        if args.command == "db-clean":
            return db_clean(args.days, execute=args.execute)
        if args.command == "run":
            return run(ExecutorChoice(args.executor, args.workers, args.queues or None, args.flower))
        return stop()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
