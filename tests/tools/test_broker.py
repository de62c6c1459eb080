"""The embedded Celery broker (tools.broker.EmbeddedRedis): a real redis-server on a free loopback port.

It keeps what it was told across a SIGKILL (append-only file, fsync on every write) and answers no
client without the password.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import tools.broker
from tools.broker import EmbeddedRedis, resolve_test_redis

PASSWORD = "broker-test-password"  # pragma: allowlist secret


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running(broker: EmbeddedRedis, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """redis-server in the foreground, as the stack's supervisor runs it; SIGKILLed on the way out."""
    with log.open("ab") as out:
        process = subprocess.Popen(broker.argv(), stdout=out, stderr=subprocess.STDOUT)
    try:
        broker.wait_ready(timeout=30)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


@pytest.fixture
def broker(tmp_path: Path) -> EmbeddedRedis:
    return EmbeddedRedis(tmp_path / "redis", PASSWORD, free_port())


def test_a_key_written_before_a_sigkill_is_there_after_the_restart(
    broker: EmbeddedRedis, tmp_path: Path
) -> None:
    log = tmp_path / "broker.log"
    with running(broker, log) as process:
        client = redis.Redis.from_url(broker.url)
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        client.rpush("source", "message-1", "message-2")
        client.close()
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
        assert not broker.ping()

    with running(broker, log):
        client = redis.Redis.from_url(broker.url)
        assert client.lrange("source", 0, -1) == [b"message-1", b"message-2"]
        client.close()
    # The config holds the password: owner-only, as is the data directory.
    assert stat.S_IMODE(broker.config_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(broker.data_dir.stat().st_mode) == 0o700


def test_a_client_without_the_password_is_refused(broker: EmbeddedRedis, tmp_path: Path) -> None:
    with running(broker, tmp_path / "broker.log"):
        # No retries: redis-py would otherwise try a refused login again, with backoff, for seconds.
        once = {"host": "127.0.0.1", "port": broker.port, "socket_timeout": 5, "retry": Retry(NoBackoff(), 0)}
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(**once).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(**once, password="guess").ping()  # pragma: allowlist secret
        assert broker.ping()


def test_without_a_redis_the_tests_start_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh laptop: no TEST_REDIS_URL, nothing on the default port: a real redis-server is started."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        closed_port = probe.getsockname()[1]
    monkeypatch.delenv("TEST_REDIS_URL", raising=False)
    monkeypatch.setattr(tools.broker, "TEST_REDIS_DEFAULT", f"redis://127.0.0.1:{closed_port}/15")

    url, process = resolve_test_redis()

    try:
        assert process is not None
        assert url.endswith("/15")
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.set("probe", "1")
        assert client.get("probe") == b"1"
        client.close()
    finally:
        process.terminate()
        process.wait(timeout=10)
