"""The Celery queues tasks are routed to, by what they wait on (docs/operations.md, "Queues and sizing").

The library sets a task's queue (sync_dag: the extract on the source's, everything else on the
warehouse's; standard_dag: the warehouse's by default), and a sync's YAML may override either. Every
queue here needs a worker listening to it: `make run EXECUTOR=celery` and docker-compose.yaml's workers
listen to all of them. Under the LocalExecutor queues are ignored.
"""

from __future__ import annotations

from enum import StrEnum


class Queue(StrEnum):
    # Network-bound, rate-limited work: extracts that spend their time waiting on an upstream API.
    SOURCE = "source"
    # Warehouse-bound work: verify, merge, data-quality checks, reports, maintenance.
    WAREHOUSE = "warehouse"


ALL_QUEUES: tuple[str, ...] = tuple(queue.value for queue in Queue)
