"""Developer tooling: the local stack, the metadata database, settings and lock management.

Nothing here is imported by DAGs or by Airflow components; shared runtime code lives in plugins/batchkit.
"""
