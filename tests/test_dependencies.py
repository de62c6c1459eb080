"""The lock is complete and is what is installed: two installs a month apart get identical packages."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tools.metadb import REPO_ROOT


def _requirements(path: Path) -> list[Requirement]:
    reqs = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            reqs.append(Requirement(line))
    return reqs


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line.strip())
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def test_every_requirement_is_pinned_in_the_lock() -> None:
    pins = _pins()
    direct = _requirements(REPO_ROOT / "requirements.txt") + _requirements(REPO_ROOT / "requirements-dev.txt")
    unpinned = [str(r) for r in direct if canonicalize_name(r.name) not in pins]
    assert not unpinned, f"constraints.txt lacks pins for {unpinned}; run `make lock`"
    for req in direct:
        assert req.specifier.contains(pins[canonicalize_name(req.name)]), f"lock contradicts {req}"


def test_airflow_version_is_the_pinned_one() -> None:
    assert _pins()["apache-airflow"] == "3.3.2"


def test_installed_packages_match_the_lock() -> None:
    mismatched = []
    for name, pinned in _pins().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            mismatched.append(f"{name}: not installed (lock says {pinned})")
            continue
        if installed != pinned:
            mismatched.append(f"{name}: installed {installed}, lock says {pinned}")
    assert not mismatched, "the venv drifted from constraints.txt:\n" + "\n".join(mismatched)
