"""A supervised stack (what `make run` runs) survives its scheduler being SIGKILLed, and stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from tools.airflow_api import wait_for
from tools.stack import HEALTH_KEYS, AirflowStack, session_processes

pytestmark = pytest.mark.e2e

# Restart after a 1 s backoff, then ~10-20 s of scheduler start-up on a busy 2-core machine.
BACK_TO_HEALTHY_WITHIN = 90


def test_killed_scheduler_is_restarted_and_the_stack_gets_healthy_again(tmp_path: Path, start_stack) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    stack, _ = start_stack(dags, supervise=True)
    killed_pid = stack.process("scheduler").popen.pid

    killed_at = time.time()
    os.killpg(killed_pid, signal.SIGKILL)

    wait_for(
        lambda: stack.process("scheduler").restarts == 1, timeout=15, interval=0.2, what="scheduler restarted"
    )
    scheduler = stack.process("scheduler")
    assert scheduler.last_exit_code == -signal.SIGKILL
    assert scheduler.popen.pid != killed_pid
    assert not session_processes(killed_pid), (
        "the killed scheduler left processes running beside its successor"
    )

    health = wait_for(
        lambda: healthy_since(stack, killed_at),
        timeout=BACK_TO_HEALTHY_WITHIN,
        what="healthy, with a scheduler heartbeat after the kill",
    )
    recovered_in = time.time() - killed_at
    print(f"SIGKILL of the scheduler -> healthy again in {recovered_in:.1f}s; health: {health}")
    assert stack.restart_counts() == {"api-server": 0, "scheduler": 1, "dag-processor": 0, "triggerer": 0}

    report = subprocess.run(
        [sys.executable, "-m", "tools.stack", "status", "--status-file", str(stack.status_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert report.returncode == 0, report.stdout + report.stderr
    row = next(line.split() for line in report.stdout.splitlines() if line.startswith("scheduler"))
    assert row[1:3] == [str(scheduler.popen.pid), "up"]
    assert row[4:] == ["1", "-9", "(SIGKILL)"]
    assert "scheduler healthy" in report.stdout

    sessions = [p.popen.pid for p in stack.processes]
    stack.stop()
    leftovers = [p for sid in sessions for p in session_processes(sid)]
    assert not leftovers, [(p.pid, p.cmdline()) for p in leftovers]
    status = json.loads(stack.status_file.read_text())
    assert {c["state"] for c in status["components"].values()} == {"down"}
    assert status["components"]["scheduler"]["restarts"] == 1


def healthy_since(stack: AirflowStack, killed_at: float) -> dict | None:
    """The health answer once every component is healthy and the scheduler heartbeat is a new one."""
    with urllib.request.urlopen(f"{stack.api_url}/api/v2/monitor/health", timeout=5) as resp:
        health = json.load(resp)
    if not all((health.get(k) or {}).get("status") == "healthy" for k in HEALTH_KEYS):
        return None
    heartbeat = health["scheduler"]["latest_scheduler_heartbeat"]
    return health if heartbeat and datetime.fromisoformat(heartbeat).timestamp() > killed_at else None
