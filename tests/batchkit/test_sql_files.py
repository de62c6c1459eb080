"""batchkit.sql_files: where the SQL files under include/ are found."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from batchkit.sql_files import INCLUDE_DIR_ENV, include_dir
from tools import REPO_ROOT


def test_include_dir_comes_from_configuration_not_from_climbing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(INCLUDE_DIR_ENV, raising=False)
    # pytest's pythonpath has the repo root: the importable `include` package is the repo's include/.
    assert include_dir().resolve() == (REPO_ROOT / "include").resolve()

    # Neither the setting nor the package: a clear error naming the setting, not a guess from __file__.
    monkeypatch.delitem(sys.modules, "include", raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not (Path(p or ".") / "include").is_dir()])
    with pytest.raises(RuntimeError, match=INCLUDE_DIR_ENV):
        include_dir()
