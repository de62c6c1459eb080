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


class StackStarter:
    """Starts stacks on demand and remembers them, so `stop_all` ends every one, even half-started."""

    def __init__(self, pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.pg_server = pg_server
        self.tmp_path_factory = tmp_path_factory
        self.started: list[tuple[AirflowStack, str]] = []

    def __call__(
        self,
        dags_folder: Path,
        *,
        settings_file: Path | None = None,
        extra_env: dict | None = None,
        supervise: bool = False,
    ) -> tuple[AirflowStack, AirflowApi]:
        """`supervise=True` restarts components that exit, as `make run` does (see AirflowStack)."""
        database = f"bk_e2e_meta_{free_port()}_{next(_counter)}"
        ensure_database(self.pg_server, database)
        stack = AirflowStack(
            airflow_home=self.tmp_path_factory.mktemp("airflow-home"),
            sql_alchemy_conn=self.pg_server.sqlalchemy_url(database),
            dags_folder=dags_folder,
            api_port=free_port(),
            extra_env=extra_env or {},
        )
        self.started.append((stack, database))
        stack.prepare(settings_file=settings_file)
        stack.start(supervise=supervise)
        stack.wait_healthy()
        return stack, AirflowApi(stack.api_url, ADMIN_USER, stack.admin_password())

    def stop_all(self) -> None:
        for stack, database in self.started:
            stack.stop()
            drop_database(self.pg_server, database)


@pytest.fixture
def start_stack(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackFactory]:
    """Start a stack over a given dags folder; returns (stack, authenticated REST client)."""
    starter = StackStarter(pg_server, tmp_path_factory)
    yield starter
    starter.stop_all()


@pytest.fixture(scope="module")
def start_module_stack(
    pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StackFactory]:
    """Like `start_stack`, but its stacks live until the test module ends: one stack for several tests."""
    starter = StackStarter(pg_server, tmp_path_factory)
    yield starter
    starter.stop_all()
