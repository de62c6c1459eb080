"""Airflow DAG built from include/automations/<this file's name>.yaml: the YAML is the whole definition."""

from batchkit.sync_dag import sync_dag

dag = sync_dag(__file__)
