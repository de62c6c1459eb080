"""Assets: one per warehouse table, so downstream DAGs schedule on "the table was refreshed"."""

from __future__ import annotations

from airflow.sdk import Asset

from batchkit.load.identifiers import identifier_parts

TABLE_SCHEME = "x-table"


def table_asset(table: str, *, conn_id: str = "warehouse") -> Asset:
    """The Asset of a schema-qualified table in the database behind `conn_id`.

    Not a postgres:// URI: that form needs the server's host and database, which only the connection
    knows, and connections are never read at parse time. The scheme is `x-table`: Airflow leaves `x-`
    schemes, its mark of a custom scheme, as they are, while any other scheme makes it load every
    provider's asset URI handlers first, and the amazon provider's imports boto3. That import was half
    of every sync DAG file's parse in the dag-processor (BENCHMARKS.md, "Parse time: the asset URI
    scheme").
    """
    schema, name = identifier_parts(table, "table")
    return Asset(name=f"{conn_id}.{schema}.{name}", uri=f"{TABLE_SCHEME}://{conn_id}/{schema}/{name}")
