"""docker-compose.yaml, the Dockerfile and .env.example, checked without a Docker engine.

CI has no Docker, so the compose stack is never started here. These tests check what would otherwise only
fail on a user's machine: a service without a health check or dependency condition, a secret written
inline, an image that drifts from the locked Airflow version, code folders not mounted, a `${VAR}` that a
fresh `.env` leaves unset, and names (job types, the Celery app, ports) that the installed Airflow does
not know.

They also hold the least-privilege layout SECURITY.md describes: which service sees which secret, that
no service running DAG code gets metadata DB credentials as a connection, that tasks connect as the
`warehouse` role only, and that the Postgres init script creates roles without superuser powers.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import re
import secrets
import shlex
import subprocess
import tomllib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import yaml

from batchkit.queues import ALL_QUEUES
from tools.metadb import REPO_ROOT
from tools.stack import CeleryCluster

COMPOSE_FILE = REPO_ROOT / "docker-compose.yaml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"

AIRFLOW_HOME_IN_IMAGE = "/opt/airflow"
CODE_FOLDERS = ("dags", "plugins", "include", "config")
ONE_SHOT_RESTART_POLICIES = ("no", "on-failure")
# One-shot admin commands run by hand (`docker compose --profile maintenance run --rm ...`).
MAINTENANCE_PROFILE = "maintenance"
DEPENDENCY_CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")
PLACEHOLDER = "change-me"

VARIABLE_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# `${NAME}`, `${NAME<op>...}` or `$NAME`; `$$` is compose's escape for a literal `$`.
VARIABLE_REFERENCE = re.compile(
    rf"\$(?:\{{(?P<braced>{VARIABLE_NAME})(?P<operator>:?[-?+])?|(?P<bare>{VARIABLE_NAME}))"
)
# Required (`${NAME}`, `${NAME:?message}`): the value comes from the environment, never from this file.
REQUIRED_REFERENCE = re.compile(rf"\$\{{{VARIABLE_NAME}(?::?\?[^}}]*)?\}}")
DEFAULTED_REFERENCE = re.compile(rf"\$\{{{VARIABLE_NAME}:?-(?P<default>[^}}]*)\}}")
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|FERNET|CREDENTIAL|BASIC_AUTH|(^|_)KEY($|_)", re.I)
# ...but `*_FILE` / `*_PATH` name where a secret is kept, not the secret.
LOCATION_SUFFIXES = ("_FILE", "_PATH")
SECRET_FLAG = re.compile(r"--(?:password|secret|token|key)[= ]+(?P<value>\S+)", re.I)
URL_PASSWORD = re.compile(r"://[^\s/@]*:(?P<password>[^\s/@]+)@")
REQUIRED_MARK = "<required>"


# --- reading the files ------------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    """The compose file with YAML anchors and merge keys resolved (variables left uninterpolated)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def airflow_services() -> dict[str, dict[str, Any]]:
    """Services running Airflow itself, named `airflow-*` (demo-upstream only borrows the image)."""
    return {name: svc for name, svc in services().items() if name.startswith("airflow-")}


def subcommand(service: dict) -> tuple[str, ...]:
    """The `airflow` subcommand a service runs, without its options: ("celery", "worker") for
    `celery worker --queues source,warehouse`."""
    words = as_list(service.get("command"))
    options = next((i for i, word in enumerate(words) if word.startswith("-")), len(words))
    return tuple(words[:options])


def as_list(value: str | list[str] | None) -> list[str]:
    """A compose command or healthcheck test in exec form; the string form is split like a shell would."""
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {name: "" if value is None else str(value) for name, value in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Target path -> source, from the short `source:target[:mode]` syntax."""
    result = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        result[target] = source
    return result


def published_container_ports(service: dict[str, Any]) -> list[int]:
    """Container ports of `[ip:]host:container[/proto]` entries."""
    return [int(str(port).rsplit(":", 1)[-1].split("/")[0]) for port in service.get("ports", [])]


def url_port(url: str) -> int:
    parsed = urlsplit(url)
    return parsed.port or (443 if parsed.scheme == "https" else 80)


def healthcheck_url(service: dict[str, Any]) -> str:
    (url,) = [part for part in as_list(service["healthcheck"]["test"]) if part.startswith("http://")]
    return url


def is_one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart") in ONE_SHOT_RESTART_POLICIES


def is_maintenance(service: dict[str, Any]) -> bool:
    return service.get("profiles") == [MAINTENANCE_PROFILE]


def strings(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string value in a YAML tree, with a dotted path naming where it sits."""
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from strings(value, f"{path}[{index}]")


def variable_references(text: str) -> Iterator[tuple[str, str]]:
    """(name, operator) of each interpolation in `text`; also finds references nested in a default."""
    position = 0
    while (position := text.find("$", position)) != -1:
        if text.startswith("$$", position):
            position += 2
            continue
        match = VARIABLE_REFERENCE.match(text, position)
        if match is None:
            position += 1
            continue
        yield match["braced"] or match["bare"], match["operator"] or ""
        position = match.end()


def literal_text(value: str) -> str:
    """What a value holds when only required variables are set: their references become a mark, and a
    `${NAME:-default}` becomes its default, which is text written in this file."""
    value = DEFAULTED_REFERENCE.sub(lambda match: match["default"], value)
    return REQUIRED_REFERENCE.sub(REQUIRED_MARK, value)


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) and not name.upper().endswith(LOCATION_SUFFIXES)


def env_example() -> dict[str, str]:
    values = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, separator, value = line.partition("=")
        if not (separator and re.fullmatch(VARIABLE_NAME, name)):
            raise ValueError(f".env.example line {number}: expected NAME=value, got {line!r}")
        values[name] = value
    return values


def constraints_pin(package: str) -> str:
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        name, separator, version = line.strip().partition("==")
        if separator and name.lower() == package:
            return version
    raise AssertionError(f"constraints.txt has no `{package}==` pin")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical_lines, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            if current.strip():
                logical_lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical_lines]


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (the last matching rule wins)."""
    ignored = False
    for rule in DOCKERIGNORE.read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negated = rule.startswith("!")
        pattern = rule.removeprefix("!").strip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            ignored = not negated
    return ignored


# --- the compose file -------------------------------------------------------------------------------


def test_compose_file_parses_into_services_and_declared_volumes() -> None:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict), "docker-compose.yaml: not a mapping"
    assert document.get("services"), "docker-compose.yaml: no `services`"
    declared = set(document.get("volumes") or {})
    for name, service in document["services"].items():
        assert service.get("image"), f"service {name}: no `image`"
        for target, source in mounts(service).items():
            if source.startswith(("./", "/")):
                continue
            assert source in declared, (
                f"service {name}: volumes -> {target}: named volume {source!r} undeclared"
            )


def test_every_service_is_health_checked_or_a_one_shot_others_wait_for() -> None:
    awaited = {
        target
        for service in services().values()
        for target, dependency in (service.get("depends_on") or {}).items()
        if dependency.get("condition") == "service_completed_successfully"
    }
    for name, service in services().items():
        if is_maintenance(service):
            assert is_one_shot(service), f"service {name}: a maintenance command must be a one-shot"
            assert name not in awaited, f"service {name}: others wait for a command that runs only by hand"
            continue
        if name in awaited:
            assert is_one_shot(service), (
                f"service {name}: restart {service.get('restart')!r}; a one-shot others wait for must use "
                f'one of {ONE_SHOT_RESTART_POLICIES} (quote "no": bare `no` is YAML false)'
            )
            continue
        healthcheck = service.get("healthcheck") or {}
        assert not healthcheck.get("disable"), f"service {name}: healthcheck disabled"
        test = as_list(healthcheck.get("test"))
        assert test[:1] in (["CMD"], ["CMD-SHELL"]), f"service {name}: healthcheck.test: {test}"
        assert len(test) > 1, f"service {name}: healthcheck.test runs nothing: {test}"


def test_every_dependency_has_a_condition_its_target_can_meet() -> None:
    for name, service in services().items():
        depends_on = service.get("depends_on") or {}
        assert isinstance(depends_on, dict), f"service {name}: depends_on is a list; give each a condition"
        for target, dependency in depends_on.items():
            where = f"service {name}: depends_on.{target}"
            assert target in services(), f"{where}: no such service"
            condition = (dependency or {}).get("condition")
            assert condition in DEPENDENCY_CONDITIONS, f"{where}: condition {condition!r}"
            if condition == "service_healthy":
                assert services()[target].get("healthcheck"), f"{where}: service_healthy, but no healthcheck"
            if condition == "service_completed_successfully":
                assert is_one_shot(services()[target]), f"{where}: waits for an exit, but {target} restarts"


def test_no_secret_is_written_inline() -> None:
    for name, service in services().items():
        for variable, value in environment(service).items():
            if is_secret_name(variable):
                assert re.fullmatch(f"({re.escape(REQUIRED_MARK)})+", literal_text(value)), (
                    f"service {name}: environment.{variable} = {value!r}: a secret must be a required "
                    f"reference like ${{{variable}:?...}} with no default"
                )
    for path, value in strings(compose(), "docker-compose.yaml"):
        text = literal_text(value)
        for match in URL_PASSWORD.finditer(text):
            assert match["password"] == REQUIRED_MARK, f"{path}: password inline in a URL: {value!r}"
        for match in SECRET_FLAG.finditer(text):
            assert match["value"].strip("\"'") == REQUIRED_MARK, (
                f"{path}: secret flag with a literal: {value!r}"
            )


def test_env_example_holds_placeholders_only() -> None:
    for variable, value in env_example().items():
        if is_secret_name(variable):
            assert PLACEHOLDER in value, (
                f".env.example: {variable}={value!r} looks like a real secret; write {PLACEHOLDER} and a "
                "comment on how to generate one"
            )
        for match in URL_PASSWORD.finditer(value):
            assert PLACEHOLDER in match["password"], f".env.example: {variable} has a password in its URL"


def test_every_variable_is_in_env_example_or_has_a_default() -> None:
    example = env_example()
    for path, value in strings(compose(), "docker-compose.yaml"):
        for variable, operator in variable_references(value):
            if operator in (":-", "-"):
                continue
            assert example.get(variable), (
                f"{path}: ${{{variable}}} has no default, and .env.example does not set it: a user who "
                "copies .env.example would start with it unset"
            )


def test_code_folders_are_mounted_into_every_airflow_service() -> None:
    assert airflow_services(), "docker-compose.yaml: no airflow-* services"
    for name, service in airflow_services().items():
        service_mounts = mounts(service)
        for folder in CODE_FOLDERS:
            target = f"{AIRFLOW_HOME_IN_IMAGE}/{folder}"
            assert service_mounts.get(target) == f"./{folder}", (
                f"service {name}: volumes: ./{folder} is not mounted at {target} (found {service_mounts})"
            )


def test_bind_mount_sources_exist_in_the_repository() -> None:
    # Docker creates a missing source as an empty root-owned directory, hiding the mistake.
    for name, service in services().items():
        for target, source in mounts(service).items():
            if source.startswith("./"):
                assert (REPO_ROOT / source).exists(), f"service {name}: volumes -> {target}: {source} missing"


def test_celery_services_run_only_in_the_celery_profile() -> None:
    celery_services = {
        name
        for name, service in services().items()
        if service["image"].startswith("redis:") or as_list(service.get("command"))[:1] == ["celery"]
    }
    assert celery_services, "docker-compose.yaml: no redis or `celery ...` services"
    for name, service in services().items():
        expected = ["celery"] if name in celery_services else None
        if is_maintenance(service):
            continue
        assert service.get("profiles") == expected, f"service {name}: profiles {service.get('profiles')}"
    for name, service in services().items():
        if name in celery_services:
            continue
        for target in service.get("depends_on") or {}:
            assert target not in celery_services, (
                f"service {name}: depends_on.{target}, which plain `docker compose up` does not start"
            )
            assert not is_maintenance(services()[target]), (
                f"service {name}: depends_on.{target}, which only `--profile {MAINTENANCE_PROFILE}` runs"
            )


def test_the_api_server_is_published_and_is_where_the_execution_api_points() -> None:
    (api_server,) = [n for n, s in services().items() if subcommand(s) == ("api-server",)]
    service = services()[api_server]
    port = url_port(healthcheck_url(service))
    assert port in published_container_ports(service), (
        f"service {api_server}: ports {service.get('ports')} do not publish container port {port}"
    )
    for name, airflow_service in airflow_services().items():
        execution_api = urlsplit(environment(airflow_service)["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
        assert (execution_api.hostname, execution_api.port, execution_api.path) == (
            api_server,
            port,
            "/execution/",
        ), f"service {name}: environment.AIRFLOW__CORE__EXECUTION_API_SERVER_URL does not reach {api_server}"


def test_the_warehouse_database_is_created_by_the_postgres_init_script() -> None:
    scripts = postgres_init_scripts()
    created = set(re.findall(r"CREATE DATABASE\s+(\w+)", scripts, re.I))
    roles = set(re.findall(r"CREATE ROLE\s+(\w+)", scripts, re.I))
    with_warehouse = {n: environment(s) for n, s in services().items() if "WAREHOUSE_DB" in environment(s)}
    assert with_warehouse, "docker-compose.yaml: no service sets WAREHOUSE_* for the `warehouse` connection"
    for name, env in with_warehouse.items():
        assert env["WAREHOUSE_HOST"] == postgres_service(), f"service {name}: environment.WAREHOUSE_HOST"
        assert env["WAREHOUSE_DB"] in created, (
            f"service {name}: environment.WAREHOUSE_DB={env['WAREHOUSE_DB']!r}, but the init scripts create "
            f"{created}"
        )
        assert env["WAREHOUSE_USER"] in roles, (
            f"service {name}: environment.WAREHOUSE_USER={env['WAREHOUSE_USER']!r}, but the init scripts "
            f"create the roles {roles}"
        )


# --- the image --------------------------------------------------------------------------------------


def test_image_is_the_locked_airflow_version_on_the_project_python() -> None:
    airflow_version = constraints_pin("apache-airflow")
    requires_python = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    python_version = re.fullmatch(r"==(\d+\.\d+)\.\*", requires_python)[1]
    (base,) = [args for instruction, args in dockerfile_instructions() if instruction == "FROM"]
    assert base == f"apache/airflow:{airflow_version}-python{python_version}", (
        f"Dockerfile: FROM {base}; constraints.txt pins apache-airflow=={airflow_version}, "
        f"pyproject.toml requires Python {python_version}"
    )
    for name, service in services().items():
        if "build" in service:
            tag = service["image"].rsplit(":", 1)[-1]
            assert tag == airflow_version, (
                f"service {name}: image {service['image']} (built), tag != {airflow_version}"
            )


def test_image_installs_the_locked_requirements_from_a_minimal_context() -> None:
    instructions = dockerfile_instructions()
    installs = [args for instruction, args in instructions if instruction == "RUN" and "pip install" in args]
    assert any(
        re.search(r"-r \S*requirements\.txt", args) and re.search(r"-c \S*constraints\.txt", args)
        for args in installs
    ), f"Dockerfile: no `pip install -r requirements.txt -c constraints.txt` (found {installs})"
    for instruction, args in instructions:
        if instruction in ("COPY", "ADD"):
            *sources, _destination = [part for part in args.split() if not part.startswith("--")]
            for source in sources:
                assert (REPO_ROOT / source).exists(), f"Dockerfile: {instruction} {source}: no such file"
                assert not dockerignored(source), (
                    f"Dockerfile: {instruction} {source}: excluded by .dockerignore"
                )
    for private in (".env", ".local", ".venv"):
        assert dockerignored(private), f".dockerignore lets {private} into the build context"


# --- names the installed Airflow must know ----------------------------------------------------------


def test_job_check_healthchecks_name_job_types_airflow_knows() -> None:
    from airflow.cli.cli_config import ARG_JOB_TYPE_FILTER

    checked = 0
    for name, service in services().items():
        test = as_list((service.get("healthcheck") or {}).get("test"))
        if "--job-type" in test:
            job_type = test[test.index("--job-type") + 1]
            assert job_type in ARG_JOB_TYPE_FILTER.kwargs["choices"], f"service {name}: job type {job_type!r}"
            assert "--local" in test, f"service {name}: `jobs check` without --local passes on any host's job"
            checked += 1
    assert checked, "docker-compose.yaml: no `airflow jobs check` healthcheck"


def test_component_healthchecks_use_the_ports_airflow_listens_on() -> None:
    from airflow.configuration import conf

    listening = {
        ("scheduler",): conf.get_default_value("scheduler", "scheduler_health_check_server_port"),
        ("celery", "flower"): conf.get_default_value("celery", "flower_port"),
        ("api-server",): conf.get_default_value("api", "port"),
    }
    for command, port in listening.items():
        (name,) = [n for n, s in services().items() if subcommand(s) == command]
        assert url_port(healthcheck_url(services()[name])) == int(port), (
            f"service {name}: healthcheck.test does not use port {port}"
        )
    (scheduler,) = [n for n, s in services().items() if subcommand(s) == ("scheduler",)]
    assert environment(services()[scheduler]).get("AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK") == "true", (
        f"service {scheduler}: environment.AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK must be true for port 8974"
    )


def test_worker_healthcheck_pings_the_celery_app_airflow_provides() -> None:
    (worker,) = [n for n, s in services().items() if subcommand(s) == ("celery", "worker")]
    test = " ".join(as_list(services()[worker]["healthcheck"]["test"]))
    app_path = re.search(r"--app (\S+)", test)[1]
    module_name, _, attribute = app_path.rpartition(".")
    app = getattr(importlib.import_module(module_name), attribute)
    assert app.main, f"service {worker}: healthcheck.test: {app_path} is not a Celery app"


def test_celery_workers_serve_every_queue_with_the_settings_of_make_run() -> None:
    workers = {n: s for n, s in services().items() if subcommand(s) == ("celery", "worker")}
    served: set[str] = set()
    for name, service in workers.items():
        command = as_list(service["command"])
        assert "--queues" in command, f"service {name}: no --queues; it would listen to `default` only"
        served |= set(command[command.index("--queues") + 1].split(","))
    assert served == set(ALL_QUEUES), (
        f"docker-compose.yaml: workers listen to {sorted(served)}, the library routes to {sorted(ALL_QUEUES)}"
    )
    local = CeleryCluster(broker_url="redis://unused", result_backend="db+unused", workers=()).env()
    for name, service in workers.items():
        env = environment(service)
        for setting in ("AIRFLOW__CELERY__WORKER_CONCURRENCY", "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT"):
            assert literal_text(env[setting]) == local[setting], (
                f"service {name}: {setting} defaults to {literal_text(env[setting])!r}, make run uses {local[setting]!r}"
            )


def test_the_redis_broker_keeps_its_messages_on_disk() -> None:
    (broker,) = [s for s in services().values() if s["image"].startswith("redis:")]
    command = as_list(broker["command"])
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"
    assert mounts(broker).get("/data") in compose()["volumes"], "the broker's /data is not a named volume"


# --- airflow-init -----------------------------------------------------------------------------------


def init_script() -> tuple[str, list[str]]:
    awaited = {
        target
        for service in services().values()
        for target, dependency in (service.get("depends_on") or {}).items()
        if dependency.get("condition") == "service_completed_successfully"
    }
    (name,) = [n for n in awaited if n.startswith("airflow-")]
    command = as_list(services()[name]["command"])
    assert command[:2] == ["bash", "-c"], f"service {name}: command is not bash -c SCRIPT"
    assert len(command) == 3, f"service {name}: command is not bash -c SCRIPT"
    return name, command


def run_init_script(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    _, command = init_script()
    # No `airflow` on this PATH: a script that gets past its guard stops at `airflow db migrate`.
    return subprocess.run(
        command, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=30
    )


def test_init_refuses_to_start_with_the_placeholders_of_env_example() -> None:
    example = env_example()
    result = run_init_script(example)
    assert result.returncode == 1, f"{init_script()[0]}: started with placeholders: {result.stderr}"
    named = set(result.stderr.split())
    assert {name for name, value in example.items() if PLACEHOLDER in value} <= named, result.stderr


def test_init_runs_the_migration_once_every_placeholder_is_replaced() -> None:
    filled = {
        name: value.replace(PLACEHOLDER, secrets.token_urlsafe(16)) for name, value in env_example().items()
    }
    result = run_init_script(filled)
    assert PLACEHOLDER not in result.stderr, result.stderr
    # Exit 127 from the first step after the guard: the script went on to migrate.
    assert "airflow: command not found" in result.stderr, f"{init_script()[0]}: {result.stderr}"
    assert result.returncode == 127, f"{init_script()[0]}: exit {result.returncode}: {result.stderr}"


def test_init_migrates_the_warehouse_control_tables_as_the_warehouse_owner() -> None:
    """Tasks only check the control tables' version (batchkit.migrations.require_current): the init
    service must bring them to it, after Airflow's own migration, with the code and SQL it needs."""
    name, command = init_script()
    steps = [line.strip() for line in command[2].splitlines()]
    assert "python -m tools.migrate" in steps, f"service {name}: no `python -m tools.migrate` step"
    assert steps.index("python -m tools.migrate") > steps.index("airflow db migrate"), (
        f"service {name}: order"
    )
    service = services()[name]
    env = environment(service)
    # tools.migrate connects with WAREHOUSE_*: the role that owns the warehouse database (init script).
    assert env["WAREHOUSE_USER"] == "warehouse", f"service {name}: WAREHOUSE_USER"
    assert re.search(r"CREATE DATABASE warehouse OWNER warehouse", postgres_init_scripts())
    assert env["BATCHKIT_INCLUDE_DIR"] == "/opt/airflow/include", f"service {name}: BATCHKIT_INCLUDE_DIR"
    assert {"/opt/airflow/tools", "/opt/airflow/plugins", "/opt/airflow/include"} <= set(mounts(service)), (
        f"service {name}: tools.migrate needs tools/, plugins/ (batchkit) and include/ (the migrations)"
    )


# --- least privilege: which service sees which secret (SECURITY.md) --------------------------------

INIT_DIR_TARGET = "/docker-entrypoint-initdb.d"
PLACEHOLDER_GUARD = "docker/refuse-placeholders.sh"
# Services that run DAG authors' code: tasks (LocalExecutor in the scheduler, CeleryExecutor in workers),
# DAG files at parse time and DAG-level callbacks (dag-processor), triggers and deadline callbacks
# (triggerer). Named by command, as Airflow knows them.
RUNS_DAG_CODE = (("scheduler",), ("dag-processor",), ("triggerer",), ("celery", "worker"))
API_SERVER = ("api-server",)
SCHEDULER = ("scheduler",)
FLOWER = ("celery", "flower")
# Who receives each secret of .env: the whole audience, by service name. A new secret, or a service
# gaining one, is a deliberate change here and in the table in SECURITY.md.
SECRET_AUDIENCE = {
    "POSTGRES_PASSWORD": {"postgres"},
    # The postgres service creates the roles with them (docker/postgres-init) ...
    "AIRFLOW_DB_PASSWORD": {
        "postgres",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-db-clean",
    },
    # ... airflow-init stores this one in the `warehouse` connection, which tasks get from the api-server.
    "WAREHOUSE_DB_PASSWORD": {"postgres", "airflow-init"},
    "CELERY_RESULTS_DB_PASSWORD": {"postgres", "airflow-scheduler", "airflow-worker", "airflow-flower"},
    "AIRFLOW__CORE__FERNET_KEY": {
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    },
    "AIRFLOW__API_AUTH__JWT_SECRET": {"airflow-apiserver", "airflow-scheduler"},
    "AIRFLOW__API__SECRET_KEY": {
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-triggerer",
        "airflow-worker",
    },
    "DEMO_API_TOKEN": {"airflow-init", "demo-upstream"},
    "FLOWER_BASIC_AUTH": {"airflow-flower"},
}


def service_named_by(command: tuple[str, ...]) -> str:
    (name,) = [n for n, s in services().items() if subcommand(s) == command]
    return name


def postgres_service() -> str:
    (name,) = [n for n, s in services().items() if s["image"].startswith("postgres:")]
    return name


def postgres_init_scripts() -> str:
    init_dir = mounts(services()[postgres_service()]).get(INIT_DIR_TARGET)
    assert init_dir, f"service {postgres_service()}: nothing mounted at {INIT_DIR_TARGET}"
    paths = sorted(p for p in (REPO_ROOT / init_dir).iterdir() if p.suffix in (".sql", ".sh"))
    assert paths, f"{init_dir}: no .sql or .sh init script"
    return "\n".join(path.read_text() for path in paths)


def sees(service: dict[str, Any], variable: str) -> bool:
    """Whether `${variable}` of .env reaches the service (referenced anywhere in its definition)."""
    return any(name == variable for _, text in strings(service, "") for name, _ in variable_references(text))


def audience(variable: str) -> set[str]:
    return {name for name, service in services().items() if sees(service, variable)}


def env_setting_holders(pattern: str) -> set[str]:
    """Services with an environment variable whose name matches `pattern` (e.g. an Airflow setting)."""
    return {
        name
        for name, service in services().items()
        if any(re.search(pattern, v) for v in environment(service))
    }


def test_no_service_reads_the_whole_env_file() -> None:
    for name, service in services().items():
        assert "env_file" not in service, (
            f"service {name}: env_file hands every secret of .env to the container; list what it needs"
        )


def test_every_secret_reaches_exactly_its_audience() -> None:
    secrets_in_example = {name for name in env_example() if is_secret_name(name)}
    assert secrets_in_example == set(SECRET_AUDIENCE), (
        f".env.example secrets {sorted(secrets_in_example)} != SECRET_AUDIENCE {sorted(SECRET_AUDIENCE)}: "
        "decide which services need the new secret (here and in SECURITY.md)"
    )
    for variable, expected in SECRET_AUDIENCE.items():
        assert audience(variable) == expected, (
            f"${{{variable}}} reaches {sorted(audience(variable))}, SECURITY.md says {sorted(expected)}"
        )


def test_no_service_running_dag_code_can_sign_tokens_except_the_local_executor_scheduler() -> None:
    from airflow.executors.base_executor import BaseExecutor

    signers = env_setting_holders(r"^AIRFLOW__API_AUTH__JWT_(SECRET|PRIVATE_KEY)") | audience(
        "AIRFLOW__API_AUTH__JWT_SECRET"
    )
    # The scheduler's executor signs every task's execution-API token, so with the LocalExecutor the
    # task processes (its children) run next to the key: SECURITY.md says so, and CeleryExecutor moves
    # task code to workers that do not have it. Once executors stop signing, drop the scheduler here.
    assert "jwt_generator" in vars(BaseExecutor), "executors no longer sign task tokens: remove the exception"
    assert signers == {service_named_by(API_SERVER), service_named_by(SCHEDULER)}, sorted(signers)
    for command in RUNS_DAG_CODE:
        if command != SCHEDULER:
            assert service_named_by(command) not in signers, f"{service_named_by(command)} can sign tokens"


def test_celery_workers_and_flower_get_no_metadata_database() -> None:
    for command in (("celery", "worker"), FLOWER):
        name = service_named_by(command)
        env = environment(services()[name])
        assert not any("SQL_ALCHEMY_CONN" in variable for variable in env), f"service {name}: metadata DB URL"
        backend = urlsplit(literal_text(env["AIRFLOW__CELERY__RESULT_BACKEND"]).removeprefix("db+"))
        metadata = urlsplit(
            literal_text(environment(services()["airflow-scheduler"])["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        )
        assert (backend.username, backend.path) != (metadata.username, metadata.path), (
            f"service {name}: the Celery result backend is the metadata DB"
        )


def test_airflow_connects_as_its_own_role_never_the_superuser() -> None:
    superuser = literal_text(environment(services()[postgres_service()])["POSTGRES_USER"])
    roles = set(re.findall(r"CREATE ROLE\s+(\w+)", postgres_init_scripts(), re.I))
    for path, value in strings(compose(), "docker-compose.yaml"):
        for url in re.findall(r"postgresql\+\w+://[^\s]+", literal_text(value)):
            user = urlsplit(url).username
            assert user != superuser, f"{path}: connects as the Postgres superuser {user!r}"
            assert user in roles, f"{path}: connects as {user!r}, not a role the init scripts create"


def test_postgres_init_creates_least_privilege_roles_from_passwords_it_is_given() -> None:
    scripts = postgres_init_scripts()
    statements = re.findall(r"CREATE ROLE\s+(\w+)(.*?);", scripts, re.I | re.S)
    assert {role for role, _ in statements} >= {"airflow", "warehouse"}, statements
    for role, options in statements:
        for option in ("LOGIN", "NOSUPERUSER", "NOCREATEROLE", "NOCREATEDB"):
            assert re.search(rf"\b{option}\b", options), f"CREATE ROLE {role}: no {option}"
        assert re.search(r"PASSWORD\s+:'\w+'", options), f"CREATE ROLE {role}: password not from a variable"
    for database, owner in re.findall(r"CREATE DATABASE\s+(\w+)\s+OWNER\s+(\w+)", scripts, re.I):
        assert re.search(rf"REVOKE CONNECT ON DATABASE {database} FROM PUBLIC", scripts), database
        assert re.search(rf"GRANT CONNECT ON DATABASE {database} TO {owner}\b", scripts), database
    assert re.search(r"CREATE DATABASE airflow OWNER airflow", scripts)
    assert re.search(r"CREATE DATABASE warehouse OWNER warehouse", scripts)
    postgres_env = environment(services()[postgres_service()])
    for variable in set(re.findall(r"\$\{?(\w+_PASSWORD)", scripts)) - {"POSTGRES_PASSWORD"}:
        assert variable in postgres_env, f"the init scripts read {variable}, the postgres service lacks it"


def test_tasks_get_no_metadata_database_connection(tmp_path) -> None:
    for name, service in services().items():
        for variable in environment(service):
            assert not variable.startswith(("METADATA_DB_", "AIRFLOW_CONN_AIRFLOW_METADATA_DB")), (
                f"service {name}: environment.{variable} hands metadata credentials to task code"
            )
    # airflow-init applies airflow_settings.yaml without its `airflow_metadata_db` connection.
    _, command = init_script()
    script = command[2]
    program = script.split("<<'PYTHON'\n", 1)[1].split("\nPYTHON\n", 1)[0]
    filtered = tmp_path / "settings.yaml"
    program = program.replace("/opt/airflow/airflow_settings.yaml", str(REPO_ROOT / "airflow_settings.yaml"))
    program = program.replace("/tmp/airflow_settings.yaml", str(filtered))
    subprocess.run(["python", "-c", program], check=True, timeout=30)
    original = yaml.safe_load((REPO_ROOT / "airflow_settings.yaml").read_text())["airflow"]["connections"]
    applied = yaml.safe_load(filtered.read_text())["airflow"]["connections"]
    assert [c["conn_id"] for c in applied] == [
        c["conn_id"] for c in original if c["conn_id"] != "airflow_metadata_db"
    ]
    assert "apply /tmp/airflow_settings.yaml" in script
    assert "connections delete airflow_metadata_db" in script


def test_airflow_db_clean_is_a_maintenance_command_not_a_task() -> None:
    cleaners = [n for n, s in services().items() if "airflow db clean" in " ".join(as_list(s.get("command")))]
    assert cleaners, "docker-compose.yaml: no service runs `airflow db clean`"
    for name in cleaners:
        assert is_maintenance(services()[name]), f"service {name}: not in the {MAINTENANCE_PROFILE} profile"
        assert is_one_shot(services()[name]), f"service {name}: not a one-shot"
        assert name not in {service_named_by(command) for command in RUNS_DAG_CODE}


def test_the_admin_password_volume_is_mounted_only_where_it_is_written() -> None:
    (holder,) = [
        n
        for n, s in services().items()
        if "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in environment(s)
    ]
    assert holder == service_named_by(API_SERVER), holder
    password_dir = environment(services()[holder])["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    volume = mounts(services()[holder])[password_dir.rsplit("/", 1)[0]]
    assert not volume.startswith(("./", "/")), f"service {holder}: the password file is on a bind mount"
    for name, service in services().items():
        if name != holder:
            assert volume not in mounts(service).values(), f"service {name}: mounts {volume}"


def test_flower_credentials_only_in_flower() -> None:
    assert env_setting_holders(r"FLOWER_BASIC_AUTH") == {service_named_by(FLOWER)}


def test_every_airflow_service_refuses_placeholders_before_starting() -> None:
    guard = f"{AIRFLOW_HOME_IN_IMAGE}/{PLACEHOLDER_GUARD}"
    for name, service in airflow_services().items():
        entrypoint = as_list(service.get("entrypoint"))
        assert guard in entrypoint, f"service {name}: entrypoint {entrypoint} does not run {guard}"
        assert entrypoint[-1] == "/entrypoint", f"service {name}: entrypoint {entrypoint} skips the image's"
        assert mounts(service).get(guard.rsplit("/", 1)[0]) == "./" + PLACEHOLDER_GUARD.rsplit("/", 1)[0], (
            name
        )

    def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(REPO_ROOT / PLACEHOLDER_GUARD), "echo", "started"],
            env={"PATH": "/usr/bin:/bin", **env},
            capture_output=True,
            text=True,
            timeout=30,
        )

    refused = run({"AIRFLOW__API_AUTH__JWT_SECRET": PLACEHOLDER, "FLOWER_BASIC_AUTH": f"admin:{PLACEHOLDER}"})
    assert refused.returncode == 1, refused
    assert "started" not in refused.stdout, refused
    assert set(refused.stderr.split()) >= {"AIRFLOW__API_AUTH__JWT_SECRET", "FLOWER_BASIC_AUTH"}
    assert PLACEHOLDER not in refused.stderr.splitlines()[-1], "the guard must name variables, not values"
    started = run({"AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(16)})
    assert (started.returncode, started.stdout.strip()) == (0, "started"), started


# --- report files and deliveries (batchkit.report_files) ---------------------------------------------

REPORTS_BASE_ENV = "REPORTS_BASE_PATH"
# Services that run tasks (render writes the files): LocalExecutor in the scheduler, Celery workers.
RUNS_TASKS = (("scheduler",), ("celery", "worker"))


def test_report_files_go_to_one_writable_volume_every_task_runner_mounts() -> None:
    volumes = set()
    for command in RUNS_TASKS:
        name = service_named_by(command)
        service = services()[name]
        base = literal_text(environment(service).get(REPORTS_BASE_ENV, ""))
        assert base.startswith("file:///"), (
            f"service {name}: {REPORTS_BASE_ENV} default {base!r} is not a file:// URL"
        )
        folder = urlsplit(base).path.rstrip("/")
        source = mounts(service).get(folder)
        assert source, (
            f"service {name}: nothing mounted at {folder}, report files would die with the container"
        )
        assert not source.startswith(("./", "/")), f"service {name}: {folder} is a bind mount, not a volume"
        read_only = [v for v in service["volumes"] if v.split(":")[1] == folder and v.endswith(":ro")]
        assert not read_only, f"service {name}: {folder} is mounted read-only"
        volumes.add(source)
    assert len(volumes) == 1, f"task runners write reports to different volumes: {sorted(volumes)}"


def test_named_volumes_under_airflow_home_exist_in_the_image() -> None:
    """An empty named volume takes the ownership of the directory it is mounted on: one the image lacks is
    created root-owned, and the airflow user cannot write to it (logs, the password file, reports)."""
    created = {
        path
        for line in DOCKERFILE.read_text().splitlines()
        if "mkdir" in line
        for path in line.split()
        if path.startswith(AIRFLOW_HOME_IN_IMAGE + "/")
    }
    declared = set(compose().get("volumes") or {})
    for name, service in airflow_services().items():
        for target, source in mounts(service).items():
            if source in declared and target.startswith(AIRFLOW_HOME_IN_IMAGE + "/"):
                assert target in created, (
                    f"service {name}: volume {source} at {target}, which the Dockerfile does not create "
                    f"(add it to `RUN mkdir -p ...`)"
                )


def test_reports_are_delivered_to_their_own_inbox_not_the_alerts_one() -> None:
    init = environment(services()["airflow-init"])
    reports, alerts = literal_text(init["REPORTS_WEBHOOK_URL"]), literal_text(init["ALERTS_WEBHOOK_URL"])
    assert urlsplit(reports).path == "/reports", reports
    assert reports != alerts
    assert urlsplit(reports).hostname in services(), f"{reports}: not a compose service"


# --- metrics and lineage (docs/operations.md, "Metrics and lineage") ----------------------------------

# Long-running Airflow components: each emits its own metrics, and the task runners batchkit's.
EMITS_METRICS = (API_SERVER, SCHEDULER, ("dag-processor",), ("triggerer",), ("celery", "worker"))
STATSD_EXPORTER_IMAGE = "prom/statsd-exporter:"


def flag(service: dict[str, Any], name: str) -> str | None:
    """The value of `--name=value` in a service's command."""
    for argument in as_list(service.get("command")):
        if argument.startswith(f"--{name}="):
            return argument.split("=", 1)[1]
    return None


def test_every_airflow_component_sends_tagged_statsd_to_the_exporter() -> None:
    (exporter,) = [n for n, s in services().items() if s["image"].startswith(STATSD_EXPORTER_IMAGE)]
    listen_udp = flag(services()[exporter], "statsd.listen-udp")
    assert listen_udp, f"service {exporter}: no --statsd.listen-udp"
    udp_port = listen_udp.rsplit(":", 1)[1]
    for command in EMITS_METRICS:
        name = service_named_by(command)
        env = {k: literal_text(v) for k, v in environment(services()[name]).items()}
        assert env.get("AIRFLOW__METRICS__STATSD_ON", "").lower() == "true", f"service {name}: statsd off"
        assert (env["AIRFLOW__METRICS__STATSD_HOST"], env["AIRFLOW__METRICS__STATSD_PORT"]) == (
            exporter,
            udp_port,
        ), f"service {name}: metrics do not go to {exporter}:{udp_port}"
        # Without it plain StatsD drops every tag: no dag_id/task_id on batchkit's metrics.
        assert env.get("AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED", "").lower() == "true", name
        dependency = (services()[name].get("depends_on") or {}).get(exporter) or {}
        assert dependency.get("condition"), (
            f"service {name}: may build its StatsD client before {exporter} resolves"
        )


def test_the_exporter_serves_prometheus_on_loopback_and_is_health_checked() -> None:
    (name,) = [n for n, s in services().items() if s["image"].startswith(STATSD_EXPORTER_IMAGE)]
    service = services()[name]
    web_port = int(flag(service, "web.listen-address").rsplit(":", 1)[1])
    assert web_port in published_container_ports(service)
    for port in service.get("ports", []):
        assert literal_text(str(port)).startswith("127.0.0.1:"), f"service {name}: {port} open to the network"
    assert str(web_port) in " ".join(as_list(service["healthcheck"]["test"]))


def test_openlineage_stays_off_unless_a_transport_is_given() -> None:
    import os
    import sys

    for command in EMITS_METRICS:
        env = environment(services()[service_named_by(command)])
        assert literal_text(env.get("AIRFLOW__OPENLINEAGE__TRANSPORT", "")) == "", command
    # The empty default is what the installed provider reads as "disabled" (no listener, no events).
    disabled = subprocess.run(
        [sys.executable, "-c", "from airflow.providers.openlineage import conf; print(conf.is_disabled())"],
        env={**os.environ, "AIRFLOW__OPENLINEAGE__TRANSPORT": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert disabled.stdout.strip().splitlines()[-1] == "True", disabled
