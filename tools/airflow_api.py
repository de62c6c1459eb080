"""A thin client of Airflow's public REST API v2, authenticated the way the UI is (JWT from /auth/token).

Used by the end-to-end tests and the operator verbs; it speaks only the public API.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests


class AirflowApiError(RuntimeError):
    pass


class AirflowApi:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        try:
            resp = self.session.post(
                f"{self.base_url}/auth/token",
                json={"username": username, "password": password},
                timeout=timeout,
            )
        except requests.ConnectionError as exc:
            raise AirflowApiError(f"cannot reach the Airflow API at {self.base_url}: {exc}") from exc
        if resp.status_code not in (200, 201):
            raise AirflowApiError(f"login as {username!r} failed: HTTP {resp.status_code} {resp.text[:200]}")
        self.session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.session.request(
                method, f"{self.base_url}/api/v2{path}", timeout=self.timeout, **kwargs
            )
        except requests.ConnectionError as exc:
            raise AirflowApiError(f"{method} /api/v2{path}: cannot reach {self.base_url}: {exc}") from exc
        if resp.status_code >= 400:
            raise AirflowApiError(f"{method} /api/v2{path}: HTTP {resp.status_code} {resp.text[:500]}")
        return resp.json() if resp.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def get_all(self, path: str, key: str, *, page_size: int = 100, **params: Any) -> list[dict]:
        """Every item of a paginated collection (`limit`/`offset`, `total_entries`) under `key`."""
        items: list[dict] = []
        while True:
            page = self.get(path, limit=page_size, offset=len(items), **params)
            items.extend(page[key])
            if not page[key] or len(items) >= page["total_entries"]:
                return items

    def import_errors(self) -> list[dict]:
        return self.get_all("/importErrors", "import_errors")

    def dags(self, **params: Any) -> list[dict]:
        return self.get_all("/dags", "dags", **params)

    def dag(self, dag_id: str) -> dict:
        return self.get(f"/dags/{dag_id}")

    def wait_for_dag(self, dag_id: str, timeout: float = 90) -> dict:
        """The DAG once the dag-processor has registered it."""

        def registered() -> dict | None:
            try:
                return self.dag(dag_id)
            except AirflowApiError:
                return None

        return wait_for(registered, timeout=timeout, what=f"DAG {dag_id} registered")

    def set_paused(self, dag_id: str, paused: bool) -> dict:
        return self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": paused})

    def trigger(self, dag_id: str, *, logical_date: str | None, conf: dict | None = None) -> dict:
        body: dict[str, Any] = {"logical_date": logical_date, "conf": conf or {}}
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json=body)

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}")

    def dag_runs(self, dag_id: str, **params: Any) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns", limit=100, **params)["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def backfill_dry_run(self, body: dict) -> dict:
        return self.request("POST", "/backfills/dry_run", json=body)

    def create_backfill(self, body: dict) -> dict:
        return self.request("POST", "/backfills", json=body)

    def backfill(self, backfill_id: int) -> dict:
        return self.get(f"/backfills/{backfill_id}")

    def backfills(self, dag_id: str) -> list[dict]:
        return self.get_all("/backfills", "backfills", dag_id=dag_id)

    def clear_task_instances(self, dag_id: str, body: dict) -> dict:
        return self.request("POST", f"/dags/{dag_id}/clearTaskInstances", json=body)


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 1.0, what: str) -> Any:
    """Poll until `predicate` returns something truthy; fail naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}")
