"""`make run EXECUTOR=celery`'s worker layout (tools.stack): queue hand-out and what each process gets.

No process is started here; tests/e2e/test_celery.py runs the real cluster.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from batchkit.queues import ALL_QUEUES
from tools.broker import EmbeddedRedis
from tools.stack import WORKER_NAME_ENV, CeleryCluster, CeleryWorker, StackError, parse_worker_queues

FLOWER_PASSWORD = "flower-test-password"  # pragma: allowlist secret
BROKER_PASSWORD = "broker-test-password"  # pragma: allowlist secret


def test_without_a_spec_every_worker_takes_every_queue() -> None:
    workers = parse_worker_queues(2, None)

    assert [(w.name, w.queues) for w in workers] == [("worker1", ALL_QUEUES), ("worker2", ALL_QUEUES)]
    assert set(ALL_QUEUES) == {"source", "warehouse"}


def test_queue_groups_are_handed_out_in_turn() -> None:
    workers = parse_worker_queues(3, "source warehouse")

    assert [(w.name, w.queues) for w in workers] == [
        ("worker1", ("source",)),
        ("worker2", ("warehouse",)),
        ("worker3", ("source",)),
    ]


def test_a_comma_list_gives_one_worker_several_queues() -> None:
    (worker,) = parse_worker_queues(1, "warehouse,source")

    assert worker.queues == ("warehouse", "source")


def test_an_unknown_queue_is_named_with_the_queues_the_library_routes_to() -> None:
    with pytest.raises(StackError, match=r"unknown queue\(s\) \['sourse'\]") as raised:
        parse_worker_queues(2, "sourse warehouse")

    assert "['source', 'warehouse']" in str(raised.value)


def test_a_queue_left_without_a_worker_is_refused() -> None:
    with pytest.raises(StackError, match=r"leaves \['warehouse'\] without a worker"):
        parse_worker_queues(2, "source source")
    # Handed out in turn, one worker gets only the first group.
    with pytest.raises(StackError, match=r"leaves \['warehouse'\] without a worker"):
        parse_worker_queues(1, "source warehouse")


def test_at_least_one_worker() -> None:
    with pytest.raises(StackError, match="WORKERS must be at least 1, got 0"):
        parse_worker_queues(0, None)


def cluster(tmp_path: Path, **kwargs) -> CeleryCluster:
    broker = EmbeddedRedis(tmp_path / "redis", BROKER_PASSWORD, 6390)
    return CeleryCluster(
        broker_url=broker.url,
        result_backend="db+postgresql+psycopg2://results@127.0.0.1:5432/celery_results",
        workers=(CeleryWorker("worker1", ("source",)), CeleryWorker("worker2", ALL_QUEUES)),
        concurrency=3,
        embedded_broker=broker,
        **kwargs,
    )


def test_worker_argv_carries_its_node_name_queues_and_concurrency(tmp_path: Path) -> None:
    processes = cluster(tmp_path).processes()

    assert set(processes) == {"worker1", "worker2"}  # no Flower unless asked for
    host = socket.gethostname()
    for name, queues in (("worker1", "source"), ("worker2", "source,warehouse")):
        argv, env = processes[name]
        assert argv[:5] == [sys.executable, "-m", "airflow", "celery", "worker"]
        options = dict(zip(argv[5::2], argv[6::2], strict=False))
        assert options["--celery-hostname"] == f"{name}@{host}"
        assert options["--queues"] == queues
        assert options["--concurrency"] == "3"
        assert "--skip-serve-logs" in argv
        # The hostname Airflow records on the worker's task instances: its node name.
        assert env == {
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "worker_hostname.hostname",
            WORKER_NAME_ENV: f"{name}@{host}",
        }


def test_cluster_env_selects_celery_and_carries_no_flower_login(tmp_path: Path) -> None:
    celery = cluster(tmp_path, flower_port=5599, flower_password=FLOWER_PASSWORD)

    env = celery.env()

    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == f"redis://:{BROKER_PASSWORD}@127.0.0.1:6390/0"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "3"
    assert FLOWER_PASSWORD not in "".join(env.values())


def test_flower_gets_basic_auth_through_its_own_env_never_argv(tmp_path: Path) -> None:
    processes = cluster(tmp_path, flower_port=5599, flower_password=FLOWER_PASSWORD).processes()

    argv, env = processes["flower"]
    assert argv[-6:] == ["celery", "flower", "--hostname", "127.0.0.1", "--port", "5599"]
    assert env == {"AIRFLOW__CELERY__FLOWER_BASIC_AUTH": f"admin:{FLOWER_PASSWORD}"}
    # argv is world-readable (/proc/<pid>/cmdline, ps): no process gets the password there.
    for other_argv, other_env in processes.values():
        assert not any(FLOWER_PASSWORD in part for part in other_argv)
        if other_env is not env:
            assert FLOWER_PASSWORD not in "".join(other_env.values())
