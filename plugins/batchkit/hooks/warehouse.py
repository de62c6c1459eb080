"""The warehouse database (Airflow connection id `warehouse`), as a psycopg 3 connection.

Built on the postgres provider's PostgresHook (7.1), which connects with psycopg 3 whenever SQLAlchemy
2 is installed; the hook only adds the default connection id and a connection in AUTOCOMMIT mode.
Autocommit, because the load functions (batchkit.sync, checkpoints, ledger) own their transactions:
each opens `conn.transaction()` blocks that commit one page, one merge, one claim at a time, and a
connection that silently wraps everything in one outer transaction would turn those commits into
savepoints — a killed task would then lose every page it "committed".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from airflow.providers.postgres.hooks.postgres import USE_PSYCOPG3, PostgresHook


class WarehouseHook(PostgresHook):
    default_conn_name = "warehouse"
    hook_name = "Warehouse (Postgres)"

    @contextmanager
    def autocommit_connection(self) -> Iterator[psycopg.Connection]:
        """A fresh autocommit psycopg 3 connection, closed on exit."""
        if not USE_PSYCOPG3:
            raise RuntimeError(
                "WarehouseHook needs PostgresHook on psycopg 3 (installed psycopg and SQLAlchemy >= 2)"
            )
        conn = self.get_conn()
        try:
            conn.autocommit = True
            yield conn
        finally:
            conn.close()
