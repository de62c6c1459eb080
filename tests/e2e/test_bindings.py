"""What a started stack listens on: 127.0.0.1 only (README "What `make run` starts, and where")."""

from __future__ import annotations

import contextlib
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import StackFactory
from tools.stack import session_processes

pytestmark = pytest.mark.e2e


def listening_addresses(session_ids: list[int]) -> dict[tuple[str, int], str]:
    """{(address, port): process name} of every TCP socket in LISTEN state held by the sessions' processes."""
    pids = {member.pid: member for sid in session_ids for member in session_processes(sid)}
    listening = {}
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            with contextlib.suppress(psutil.Error):
                listening[(conn.laddr.ip, conn.laddr.port)] = " ".join(pids[conn.pid].cmdline())[:80]
    return listening


def test_every_component_listens_on_loopback_only(start_stack: StackFactory, tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    stack, _ = start_stack(dags)
    sessions = [proc.popen.pid for proc in stack.processes if proc.popen is not None]
    listening = listening_addresses(sessions)
    print(f"\nlistening sockets of the stack: {listening}")
    wildcard = {addr: name for addr, name in listening.items() if addr[0] in ("0.0.0.0", "::")}
    assert not wildcard, f"listening on every interface: {wildcard}"
    # The api-server is the only listener: the worker and trigger log servers (8793, 8794), which
    # cannot be bound to one address, are not started (the api-server reads the log files directly).
    assert set(listening) == {("127.0.0.1", stack.api_port)}, listening
