"""Assets: one per warehouse table, so downstream DAGs schedule on "the table was refreshed"."""

from __future__ import annotations

from airflow.sdk import Asset

from batchkit.load.identifiers import identifier_parts


def table_asset(table: str, *, conn_id: str = "warehouse") -> Asset:
    """The Asset of a schema-qualified table in the database behind `conn_id`.

    Not a postgres:// URI: that form needs the server's host and database, which only the connection
    knows, and connections are never read at parse time.
    """
    schema, name = identifier_parts(table, "table")
    return Asset(name=f"{conn_id}.{schema}.{name}", uri=f"table://{conn_id}/{schema}/{name}")
