"""The demo upstream (tools.demo_upstream) in a subprocess on a free loopback port, for tests and benches.

    with running_upstream() as upstream:
        upstream.set_faults({"kind": "status", "status": 503, "path": "/v1/orders", "page": 2, "times": 2})
        ...
        assert upstream.page_requests("/v1/orders") == {1: 1, 2: 3}

A subprocess rather than a thread: the server gets its own interpreter (and core), and dropped
connections or slow answers behave as they would from a real remote service.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests

from tools import REPO_ROOT

START_TIMEOUT_SECONDS = 15


@dataclass
class Upstream:
    url: str
    token: str
    process: subprocess.Popen[str]

    def _control(self, method: str, path: str, document: Any = None) -> Any:
        response = requests.request(
            method,
            f"{self.url}{path}",
            json=document,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()

    def set_faults(self, *rules: Mapping[str, Any]) -> None:
        self._control("POST", "/_faults", {"rules": list(rules)})

    def reset(self) -> None:
        """No faults, zero counts."""
        self._control("POST", "/_reset")

    def stats(self) -> dict[str, Any]:
        return self._control("GET", "/_stats")

    def arrivals(self, path: str) -> list[float]:
        """When each request to data path `path` arrived, in seconds of the server's monotonic clock."""
        return [arrived for where, arrived in self._control("GET", "/_arrivals")["arrivals"] if where == path]

    def requests_to(self, path: str) -> int:
        return self.stats()["paths"].get(path, 0)

    def alerts(self) -> list[Any]:
        """The alerts POSTed to this server's /alerts inbox, oldest first."""
        return self._control("GET", "/alerts")["alerts"]

    def reports(self) -> list[Any]:
        """The report deliveries POSTed to this server's /reports inbox, oldest first."""
        return self._control("GET", "/reports")["reports"]

    def page_requests(self, path: str) -> dict[int, int]:
        """How many requests each page position of `path` received."""
        return {int(page): n for page, n in self.stats()["pages"].get(path, {}).items()}

    def connection_json(self, token: str | None = None, **extra: Any) -> str:
        """An Airflow connection (AIRFLOW_CONN_<ID> JSON) for this server: bearer token, optional extra."""
        host, port = self.url.removeprefix("http://").split(":")
        return json.dumps(
            {
                "conn_type": "http",
                "host": host,
                "port": int(port),
                "password": self.token if token is None else token,
                "extra": extra,
            }
        )


@contextmanager
def running_upstream(*args: str, env: Mapping[str, str] | None = None) -> Iterator[Upstream]:
    """Start `python -m tools.demo_upstream --port 0 <args>`; stop it on exit."""
    token = secrets.token_urlsafe(16)
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.demo_upstream", "--host", "127.0.0.1", "--port", "0", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {}), "DEMO_API_TOKEN": token},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = _first_line(process)
        if "listening on " not in line:
            raise RuntimeError(f"demo upstream did not start (exit code {process.poll()}): {line!r}")
        yield Upstream(url=line.split("listening on ")[1].strip(), token=token, process=process)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def _first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=START_TIMEOUT_SECONDS):
            raise RuntimeError(f"demo upstream printed nothing within {START_TIMEOUT_SECONDS}s")
    return process.stdout.readline()
