"""Real Airflow components (api-server, scheduler, dag-processor, triggerer) on free ports.

Every stack gets its own metadata database and AIRFLOW_HOME, and is stopped even when a test fails.
With `celery=` workers it runs the CeleryExecutor as `make run EXECUTOR=celery` does: its own
redis-server (tools.broker.EmbeddedRedis) on a free port and a result-backend database of its own.
"""

from __future__ import annotations

import itertools
import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tools.airflow_api import AirflowApi
from tools.airflow_env import ADMIN_USER
from tools.broker import EmbeddedRedis
from tools.metadb import PgServer, drop_database, ensure_database
from tools.stack import DEFAULT_WORKER_CONCURRENCY, AirflowStack, CeleryCluster, CeleryWorker

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
        self.started: list[tuple[AirflowStack, list[str]]] = []

    def __call__(
        self,
        dags_folder: Path,
        *,
        settings_file: Path | None = None,
        extra_env: dict | None = None,
        supervise: bool = False,
        celery: tuple[CeleryWorker, ...] | None = None,
        worker_concurrency: int = DEFAULT_WORKER_CONCURRENCY,
    ) -> tuple[AirflowStack, AirflowApi]:
        """`supervise=True` restarts components that exit, as `make run` does (see AirflowStack).

        `celery`: run these Celery workers (tools.stack.parse_worker_queues makes them), each with
        `worker_concurrency` slots, instead of the LocalExecutor; the broker is supervised too."""
        suffix = f"{free_port()}_{next(_counter)}"
        databases = [f"bk_e2e_meta_{suffix}"]
        ensure_database(self.pg_server, databases[0])
        cluster = None
        if celery is not None:
            databases.append(f"bk_e2e_celery_results_{suffix}")
            ensure_database(self.pg_server, databases[1])
            broker = EmbeddedRedis(
                self.tmp_path_factory.mktemp("redis"), secrets.token_urlsafe(16), free_port()
            )
            cluster = CeleryCluster(
                broker_url=broker.url,
                result_backend="db+" + self.pg_server.sqlalchemy_url(databases[1]),
                workers=celery,
                concurrency=worker_concurrency,
                embedded_broker=broker,
            )
        stack = AirflowStack(
            airflow_home=self.tmp_path_factory.mktemp("airflow-home"),
            sql_alchemy_conn=self.pg_server.sqlalchemy_url(databases[0]),
            dags_folder=dags_folder,
            api_port=free_port(),
            extra_env=extra_env or {},
            celery=cluster,
        )
        self.started.append((stack, databases))
        stack.prepare(settings_file=settings_file)
        stack.start(supervise=supervise)
        stack.wait_healthy()
        return stack, AirflowApi(stack.api_url, ADMIN_USER, stack.admin_password())

    def stop_all(self) -> None:
        for stack, databases in self.started:
            stack.stop()
            for database in databases:
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
