"""Helpers of tests/e2e/test_celery.py: which worker ran a task, killing a worker's whole session (a
machine dying), and what waits in the broker.

Nothing here is a fake: the broker is the stack's own redis-server, read with a plain Redis client.
A Celery message on Redis is a JSON envelope whose base64 body is `[args, kwargs, embed]`; the
CeleryExecutor's one argument is the workload as JSON, whose `ti` names the task instance and its try.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass

import redis

from batchkit.queues import ALL_QUEUES
from tools.stack import session_processes


def component_of(hostname: str) -> str:
    """The stack component (`worker1`) of the hostname a task instance records (`worker1@<host>`)."""
    name, _, host = hostname.partition("@")
    assert host, f"hostname {hostname!r} is not a Celery worker's node name (config/worker_hostname.py)"
    return name


def kill_session(session_id: int) -> tuple[float, int]:
    """SIGKILL every process group of a session at once: the worker, its pool processes, the task
    supervisors and the task processes (in groups of their own). Returns (wall-clock time, processes)."""
    members = session_processes(session_id)
    groups = set()
    for member in members:
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(member.pid))
    killed_at = time.time()
    # The worker's own group first: nothing is left to start a replacement pool process.
    for group in sorted(groups, key=lambda g: g != session_id):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    return killed_at, len(members)


@dataclass(frozen=True)
class QueuedTask:
    """A task instance try whose message waits in a broker queue."""

    queue: str
    dag_id: str
    run_id: str
    task_id: str
    try_number: int


def queued_tasks(broker_url: str, queues: tuple[str, ...] = ALL_QUEUES) -> list[QueuedTask]:
    """The task instance tries waiting in the broker's queues (not yet taken by a worker)."""
    client = redis.Redis.from_url(broker_url, socket_connect_timeout=2, socket_timeout=5)
    found = []
    try:
        for queue in queues:
            # kombu keeps one list per queue (and per priority step, with a suffix).
            for key in client.scan_iter(match=f"{queue}*"):
                if client.type(key) != b"list":
                    continue
                for raw in client.lrange(key, 0, -1):
                    found.append(_queued_task(queue, raw))
    finally:
        client.close()
    return found


def unacknowledged(broker_url: str) -> int:
    """Messages a worker took but never acknowledged (kombu's `unacked` hash): the broker hands them out
    again after the visibility timeout ([celery_broker_transport_options], Airflow's default 24 h)."""
    client = redis.Redis.from_url(broker_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        return int(client.hlen("unacked"))
    finally:
        client.close()


def _queued_task(queue: str, raw: bytes) -> QueuedTask:
    envelope = json.loads(raw)
    assert envelope["headers"]["task"].endswith("execute_workload"), envelope["headers"]
    args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    ti = json.loads(args[0])["ti"]
    return QueuedTask(queue, ti["dag_id"], ti["run_id"], ti["task_id"], ti["try_number"])
