"""The local Airflow stack behind `make run` / `make stop`, also used by the end-to-end tests.

`run` picks the metadata database (AIRFLOW__DATABASE__SQL_ALCHEMY_CONN, else an embedded Postgres in
.local/pgdata), migrates it, applies airflow_settings.yaml, starts the api-server, scheduler,
dag-processor and triggerer (LocalExecutor) plus the demo upstream, waits until
/api/v2/monitor/health reports every component healthy, then supervises them in the foreground.
Ctrl-C or `stop` ends every process it started; data in .local/ survives a restart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tools.airflow_env import ADMIN_USER, airflow_env
from tools.metadb import LOCAL_DIR, REPO_ROOT, EmbeddedPostgres, PgServer, ensure_database

AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
HEALTH_KEYS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
RUN_DIR = LOCAL_DIR / "run"
SUPERVISOR_PID = RUN_DIR / "stack.pid"
GENERATED_ENV = LOCAL_DIR / "generated.env"
# Secrets the stack needs that a fresh laptop does not have: generated once, kept in .local (0600).
GENERATED_SECRETS = ("DEMO_API_TOKEN",)
# What .env.example holds where a real secret must go.
ENV_PLACEHOLDER = "change-me"


class StackError(RuntimeError):
    pass


@dataclass
class Process:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None


@dataclass
class AirflowStack:
    """A set of Airflow component processes sharing one AIRFLOW_HOME and metadata database."""

    airflow_home: Path
    sql_alchemy_conn: str
    dags_folder: Path = REPO_ROOT / "dags"
    api_port: int = 8080
    extra_env: Mapping[str, str] = field(default_factory=dict)
    extra_processes: Mapping[str, list[str]] = field(default_factory=dict)
    log_dir: Path | None = None
    processes: list[Process] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return airflow_env(
            self.airflow_home,
            self.sql_alchemy_conn,
            dags_folder=self.dags_folder,
            api_port=self.api_port,
            extra=dict(self.extra_env),
        )

    @property
    def api_url(self) -> str:
        return f"http://localhost:{self.api_port}"

    @property
    def logs(self) -> Path:
        return self.log_dir or self.airflow_home / "component-logs"

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

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        argvs = {c: [sys.executable, "-m", "airflow", c] for c in AIRFLOW_COMPONENTS}
        argvs["api-server"] += ["--port", str(self.api_port)]
        argvs.update(self.extra_processes)
        env = self.env
        for name, argv in argvs.items():
            proc = Process(name, argv, self.logs / f"{name}.log")
            with proc.log_path.open("ab") as log:
                # A session of its own, so stopping the stack also stops the component's children
                # (gunicorn/uvicorn workers, LocalExecutor workers, task supervisors).
                proc.popen = subprocess.Popen(
                    argv, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            self.processes.append(proc)

    def wait_healthy(self, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        last: dict | str = "no answer yet"
        while time.monotonic() < deadline:
            self._raise_if_exited()
            try:
                with urllib.request.urlopen(f"{self.api_url}/api/v2/monitor/health", timeout=5) as resp:
                    last = json.load(resp)
                if all((last.get(k) or {}).get("status") == "healthy" for k in HEALTH_KEYS):
                    return last
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError) as exc:
                last = repr(exc)
            time.sleep(1)
        raise StackError(f"stack not healthy after {timeout:.0f}s; last health: {last}\n{self.log_tails()}")

    def exited(self) -> list[Process]:
        return [p for p in self.processes if p.popen is not None and p.popen.poll() is not None]

    def _raise_if_exited(self) -> None:
        dead = self.exited()
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
        for proc in self.processes:
            if proc.popen is not None and proc.popen.poll() is None:
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
            # Children that outlived their parent (task supervisors) still belong to the group.
            _signal_group(proc.popen.pid, signal.SIGKILL)

    def admin_password(self) -> str:
        passwords = self.airflow_home / "simple_auth_manager_passwords.json.generated"
        return json.loads(passwords.read_text())[ADMIN_USER]


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def load_env_files() -> None:
    """`.env` (the user's, optional) then generated secrets; real environment variables win."""
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
    for key, value in values.items():
        if value is not None:
            os.environ.setdefault(key, value)
    missing = [k for k in GENERATED_SECRETS if not os.environ.get(k)]
    if missing:
        GENERATED_ENV.parent.mkdir(parents=True, exist_ok=True)
        with GENERATED_ENV.open("a") as out:
            for key in missing:
                value = secrets.token_urlsafe(24)
                out.write(f"{key}={value}\n")
                os.environ[key] = value
        GENERATED_ENV.chmod(0o600)


def choose_database() -> tuple[str, PgServer, EmbeddedPostgres | None]:
    """The metadata DB URL, the server holding the warehouse DB, and the embedded server if started."""
    configured = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    if configured:
        if configured.startswith("sqlite"):
            raise StackError(
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN points at SQLite; this stack needs Postgres."
            )
        server, _ = PgServer.from_url(configured)
        print(f"metadata DB: {_redact(configured)} (from AIRFLOW__DATABASE__SQL_ALCHEMY_CONN)")
        return configured, server, None
    embedded = EmbeddedPostgres(LOCAL_DIR / "pgdata")
    print(f"metadata DB: embedded Postgres, data in {embedded.pgdata}")
    server = embedded.start()
    ensure_database(server, "airflow")
    return server.sqlalchemy_url("airflow"), server, embedded


def warehouse_env(server: PgServer) -> dict[str, str]:
    """WAREHOUSE_* for airflow_settings.yaml: the user's if set, else a `warehouse` DB on the same server."""
    env = {
        "WAREHOUSE_HOST": server.host,
        "WAREHOUSE_PORT": str(server.port),
        "WAREHOUSE_USER": server.user,
        "WAREHOUSE_PASSWORD": server.password or "",
        "WAREHOUSE_DB": "warehouse",
    }
    if "WAREHOUSE_HOST" not in os.environ:
        ensure_database(server, env["WAREHOUSE_DB"])
    return {k: os.environ.get(k, v) for k, v in env.items()}


def metadata_db_env(sql_alchemy_conn: str) -> dict[str, str]:
    """METADATA_DB_* for airflow_settings.yaml's `airflow_metadata_db` connection (platform_cleanup)."""
    server, database = PgServer.from_url(sql_alchemy_conn)
    return {
        "METADATA_DB_HOST": server.host,
        "METADATA_DB_PORT": str(server.port),
        "METADATA_DB_USER": server.user,
        "METADATA_DB_PASSWORD": server.password or "",
        "METADATA_DB_NAME": database,
    }


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def demo_upstream_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "tools.demo_upstream", "--host", "127.0.0.1", "--port", str(port)]


def run() -> int:
    load_env_files()
    if SUPERVISOR_PID.exists() and _pid_alive(int(SUPERVISOR_PID.read_text())):
        raise StackError(
            f"a stack is already running (pid {SUPERVISOR_PID.read_text().strip()}); `make stop` first"
        )
    sql_alchemy_conn, server, embedded = choose_database()
    api_port = int(os.environ.get("AIRFLOW_PORT", "8080"))
    demo_port = int(os.environ.get("DEMO_API_PORT", "8081"))
    extra_env = {
        **warehouse_env(server),
        **metadata_db_env(sql_alchemy_conn),
        "DEMO_API_URL": os.environ.get("DEMO_API_URL", f"http://127.0.0.1:{demo_port}"),
        "ALERTS_WEBHOOK_URL": os.environ.get("ALERTS_WEBHOOK_URL", f"http://127.0.0.1:{demo_port}/alerts"),
    }
    stack = AirflowStack(
        airflow_home=LOCAL_DIR / "airflow",
        sql_alchemy_conn=sql_alchemy_conn,
        api_port=api_port,
        extra_env=extra_env,
        extra_processes={"demo-upstream": demo_upstream_argv(demo_port)},
        log_dir=LOCAL_DIR / "logs",
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
        print("migrating the metadata DB and applying airflow_settings.yaml ...", flush=True)
        stack.prepare()
        print(f"starting {', '.join(AIRFLOW_COMPONENTS)} and demo-upstream; logs in {stack.logs}", flush=True)
        stack.start()
        stack.wait_healthy()
        print(
            f"\nAirflow is up in {time.monotonic() - t0:.0f}s.\n"
            f"  UI:       {stack.api_url}\n"
            f"  login:    {ADMIN_USER} / {stack.admin_password()}\n"
            f"            (password file: {stack.airflow_home / 'simple_auth_manager_passwords.json.generated'})\n"
            f"  demo API: http://127.0.0.1:{demo_port}\n"
            f"  logs:     {stack.logs}  (task logs: {stack.airflow_home / 'logs'})\n"
            "Ctrl-C or `make stop` stops everything.",
            flush=True,
        )
        while not stopping:
            dead = stack.exited()
            if dead:
                print(
                    f"component exited unexpectedly: {[p.name for p in dead]}\n{stack.log_tails()}",
                    flush=True,
                )
                return 1
            time.sleep(1)
        return 0
    finally:
        print("stopping the stack ...", flush=True)
        stack.stop()
        if embedded is not None:
            embedded.stop()
        SUPERVISOR_PID.unlink(missing_ok=True)
        print("stopped.", flush=True)


def stop(timeout: float = 60) -> int:
    if not SUPERVISOR_PID.exists():
        print("no stack is running.")
        return 0
    pid = int(SUPERVISOR_PID.read_text())
    if not _pid_alive(pid):
        # The supervisor died without cleaning up (kill -9): stop what it may have left behind.
        SUPERVISOR_PID.unlink()
        embedded = EmbeddedPostgres(LOCAL_DIR / "pgdata")
        if embedded.is_running():
            embedded.stop()
        print(f"supervisor {pid} was gone; cleaned up.")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    if _pid_alive(pid):
        print(f"stack supervisor {pid} did not stop within {timeout:.0f}s", file=sys.stderr)
        return 1
    print("stack stopped.")
    return 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "stop"])
    args = parser.parse_args(argv)
    try:
        return run() if args.command == "run" else stop()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
