"""batchkit.queues: the Celery queues tasks are routed to. That a worker listens to each of them:
tests/test_docker_compose.py and tests/tools/test_celery_stack.py."""

from __future__ import annotations

from batchkit.queues import ALL_QUEUES, Queue


def test_every_queue_is_listed_once_by_its_plain_name() -> None:
    assert ALL_QUEUES == ("source", "warehouse")
    assert Queue.SOURCE == "source"
    assert Queue.WAREHOUSE == "warehouse"
