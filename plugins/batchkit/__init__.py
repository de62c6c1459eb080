"""Shared library of the batch automations: hooks, operators and the plain functions they wrap.

It lives in plugins/ because Airflow puts that folder on sys.path for every component, the triggerer
included, so callbacks and notifiers defined here import everywhere.
"""
