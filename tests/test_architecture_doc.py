"""docs/architecture.md stays complete: it names every module of plugins/batchkit and tools, and every
path it names exists, so a new module without its line (or a moved one) fails CI."""

from __future__ import annotations

import re

from tools.metadb import REPO_ROOT

ARCHITECTURE = REPO_ROOT / "docs" / "architecture.md"
# Folders whose every .py module must have its line; the doc also lists dags/, include/, config/, bench/.
COMPLETE_FOLDERS = ("plugins/batchkit", "tools")
# A repository path in backticks: `plugins/batchkit/sync.py`, `include/sql/targets/`, `include/automations/*.yaml`.
NAMED_PATH = re.compile(r"`((?:plugins|tools|bench|dags|include|config)/[A-Za-z0-9_./*-]*)`")


def modules_of(folder: str) -> list[str]:
    return sorted(
        path.relative_to(REPO_ROOT).as_posix()
        for path in (REPO_ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    )


def named_paths(text: str) -> list[str]:
    return sorted(set(NAMED_PATH.findall(text)))


def test_every_module_of_batchkit_and_tools_has_its_line() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    named = set(named_paths(text))
    modules = [module for folder in COMPLETE_FOLDERS for module in modules_of(folder)]
    assert "plugins/batchkit/sync.py" in modules
    assert "tools/new_sync.py" in modules

    missing = [module for module in modules if module not in named]
    assert missing == [], f"docs/architecture.md has no line for: {missing}"


def test_every_path_the_doc_names_exists() -> None:
    paths = named_paths(ARCHITECTURE.read_text(encoding="utf-8"))
    assert len(paths) > 50, paths

    stale = [path for path in paths if not any(REPO_ROOT.glob(path.rstrip("/")))]
    assert stale == [], f"docs/architecture.md names paths that do not exist: {stale}"


def test_the_doc_shows_how_data_moves() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    diagram = text.split("```mermaid\n", 1)[1].split("```", 1)[0]

    for stage in ("upstream", "RestApiHook", "Page", "contract", "staging", "verify", "merge", "checks"):
        assert stage in diagram, f"the data-flow diagram lost {stage!r}"
    for side in ("Asset", "alerts", "ledger", "checkpoints"):
        assert side in diagram, f"the data-flow diagram lost {side!r}"


def test_a_module_without_its_line_is_reported() -> None:
    doc = "| `plugins/batchkit/sync.py` | the core |\n"

    assert "plugins/batchkit/sync_spec.py" not in named_paths(doc)
    assert named_paths(doc) == ["plugins/batchkit/sync.py"]
