"""The CI workflow runs `make test` (the README's command) on Python 3.11 with the services it needs."""

from __future__ import annotations

import yaml

from tools import REPO_ROOT
from tools.metadb import PgServer

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "ci.yml"


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _job() -> dict:
    (job,) = _workflow()["jobs"].values()
    return job


def test_it_runs_on_push_and_pull_requests() -> None:
    # PyYAML reads the bare key `on` as the boolean True.
    triggers = _workflow().get("on", _workflow().get(True))
    assert "pull_request" in triggers
    assert "push" in triggers


def test_it_runs_make_test_on_python_3_11_on_ubuntu() -> None:
    job = _job()
    assert job["runs-on"] == "ubuntu-latest"
    steps = job["steps"]
    runs = [step["run"].strip() for step in steps if "run" in step]
    assert "make test" in runs, runs
    (setup,) = [step for step in steps if step.get("uses", "").startswith("actions/setup-python@")]
    assert setup["with"]["python-version"] == "3.11"
    assert setup["with"]["cache"] == "pip"
    assert "constraints.txt" in setup["with"]["cache-dependency-path"]
    assert steps[0]["uses"].startswith("actions/checkout@")


def test_it_declares_postgres_15_and_redis_and_points_the_tests_at_that_postgres() -> None:
    job = _job()
    services = job["services"]
    assert services["postgres"]["image"] == "postgres:15"
    assert "5432:5432" in services["postgres"]["ports"]
    assert "pg_isready" in services["postgres"]["options"]
    assert services["redis"]["image"].startswith("redis:")
    assert "6379:6379" in services["redis"]["ports"]

    # tests/conftest.py -> tools.metadb.resolve_test_server reads BATCH_TEST_PG_URL first.
    server, database = PgServer.from_url(job["env"]["BATCH_TEST_PG_URL"])
    pg_env = services["postgres"]["env"]
    assert (server.host, server.port) == ("127.0.0.1", 5432)
    assert server.user == pg_env["POSTGRES_USER"]
    assert server.password is None
    assert pg_env["POSTGRES_HOST_AUTH_METHOD"] == "trust"
    assert database == pg_env["POSTGRES_DB"]
