"""The environment every local Airflow process gets, shared by `make run` and the test suite."""

from __future__ import annotations

import os
from pathlib import Path

from tools.metadb import REPO_ROOT

ADMIN_USER = "admin"
# Where the api-server listens: this machine only, unless the user opts out (AIRFLOW_HOST=0.0.0.0).
DEFAULT_BIND_HOST = "127.0.0.1"
# Where Airflow sends its StatsD metrics (batchkit's included) unless AIRFLOW__METRICS__STATSD_HOST/_PORT
# say otherwise: a statsd-exporter or Datadog agent on this machine's standard port, or nowhere (UDP).
DEFAULT_STATSD_HOST = "127.0.0.1"
DEFAULT_STATSD_PORT = 8125
STATSD_PREFIX = "airflow"


def airflow_env(
    airflow_home: Path,
    sql_alchemy_conn: str,
    *,
    dags_folder: Path = REPO_ROOT / "dags",
    api_port: int = 8080,
    bind_host: str = DEFAULT_BIND_HOST,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """Dev settings: examples off, a short DAG refresh, parallelism sized for a laptop, auth on, the
    api-server on `bind_host`.

    A 30 s task heartbeat timeout makes a killed task supervisor's task fail (and retry) within 40 s.
    """
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": os.environ.get("AIRFLOW__CORE__PARALLELISM", "8"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__API__HOST": bind_host,
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://localhost:{api_port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{api_port}/execution/",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
        # A task whose supervisor was killed is failed (and retried) once its heartbeat is this old;
        # the 300 s default leaves it `running` for five minutes. Supervisors heartbeat every 5 s
        # ([workers] min_heartbeat_interval), so 30 s tolerates several missed beats.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
        # How often the scheduler looks for such tasks: detection takes at most timeout + interval.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "10",
        # config/ holds airflow_local_settings.py (cluster policies); the repo root makes `include`
        # (record contracts) importable, as PYTHONPATH=/opt/airflow does in docker-compose.yaml.
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO_ROOT / "config"), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    env.update(metrics_env())
    env.update(extra or {})
    return env


def metrics_env(host: str | None = None, port: int | None = None) -> dict[str, str]:
    """Airflow's `[metrics]`: StatsD over UDP, tags (dag_id, task_id, endpoint, ...) carried InfluxDB-style
    in the metric name, which statsd-exporter and Telegraf turn into labels (docs/operations.md).

    Host and port: the arguments, else AIRFLOW__METRICS__STATSD_HOST/_PORT from the environment, else
    127.0.0.1:8125. Any AIRFLOW__METRICS__* already in the environment wins over the other defaults
    (AIRFLOW__METRICS__STATSD_ON=False turns metrics off).
    """
    defaults = {
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": DEFAULT_STATSD_HOST,
        "AIRFLOW__METRICS__STATSD_PORT": str(DEFAULT_STATSD_PORT),
        "AIRFLOW__METRICS__STATSD_PREFIX": STATSD_PREFIX,
        "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": "True",
    }
    env = {name: os.environ.get(name, value) for name, value in defaults.items()}
    if host is not None or port is not None:
        env["AIRFLOW__METRICS__STATSD_ON"] = "True"
    if host is not None:
        env["AIRFLOW__METRICS__STATSD_HOST"] = host
    if port is not None:
        env["AIRFLOW__METRICS__STATSD_PORT"] = str(port)
    return env
