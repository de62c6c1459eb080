"""Airflow DAG built from include/automations/<this file's name>.yaml: the YAML is the whole definition.

(The dag-processor only parses files that mention both "airflow" and "dag": this docstring does.)
"""

from batchkit.sync_dag import sync_dag

dag = sync_dag(__file__)
