"""batchkit.hooks.warehouse against the session's real warehouse database."""

from __future__ import annotations

import psycopg
from psycopg import sql

from batchkit.hooks.warehouse import WarehouseHook


def test_warehouse_hook_gives_an_autocommit_psycopg3_connection() -> None:
    with WarehouseHook().autocommit_connection() as conn:
        assert isinstance(conn, psycopg.Connection)
        assert conn.autocommit
        database = conn.execute(sql.SQL("SELECT current_database()")).fetchone()[0]
    assert database.startswith("bk_test_wh_")
    assert conn.closed
