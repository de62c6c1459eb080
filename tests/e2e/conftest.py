"""Real Airflow components (api-server, scheduler, dag-processor, triggerer) on free ports.

Every stack gets its own metadata database and AIRFLOW_HOME, and is stopped even when a test fails.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tools.airflow_api import AirflowApi
from tools.airflow_env import ADMIN_USER
from tools.metadb import PgServer, drop_database, ensure_database
from tools.stack import AirflowStack

_counter = itertools.count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


StackFactory = Callable[..., tuple[AirflowStack, AirflowApi]]


@pytest.fixture
def start_stack(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackFactory]:
    """Start a stack over a given dags folder; returns (stack, authenticated REST client)."""
    started: list[tuple[AirflowStack, str]] = []

    def start(dags_folder: Path, *, settings_file: Path | None = None, extra_env: dict | None = None):
        database = f"bk_e2e_meta_{free_port()}_{next(_counter)}"
        ensure_database(pg_server, database)
        stack = AirflowStack(
            airflow_home=tmp_path_factory.mktemp("airflow-home"),
            sql_alchemy_conn=pg_server.sqlalchemy_url(database),
            dags_folder=dags_folder,
            api_port=free_port(),
            extra_env=extra_env or {},
        )
        started.append((stack, database))
        stack.prepare(settings_file=settings_file)
        stack.start()
        stack.wait_healthy()
        return stack, AirflowApi(stack.api_url, ADMIN_USER, stack.admin_password())

    yield start
    for stack, database in started:
        stack.stop()
        drop_database(pg_server, database)
