"""`[core] hostname_callable` of `make run`'s Celery workers: the hostname Airflow records on a task instance.

Several workers on one machine share its FQDN; each gets its Celery node name (worker1@host, ...) in
BATCHKIT_WORKER_NAME instead, so the UI and the API show which worker ran a task. Elsewhere (docker
compose, one worker per container) the variable is unset and this is the FQDN, Airflow's default.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("BATCHKIT_WORKER_NAME") or socket.getfqdn()
