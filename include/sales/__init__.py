"""The sales domain's code besides its DAG files: the daily sales report (daily_report, its SQL in sql/)
and what platform_cleanup may remove of its files (retention).

Here, not under dags/sales/: every .py under dags/ is parsed as a DAG file (and must define one), while
include/ is importable as the `include` package by DAG files, workers and tests alike (the repo root is
on PYTHONPATH), as include/contracts is.
"""
