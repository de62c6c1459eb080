"""tools.browser finds an installed Chrome/Chromium, or says in one line what to install: never a skip."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tools import browser
from tools.browser import BrowserNotFound, ensure_browser, find_browser


def _fake_browser(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\necho Chromium 1.0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture(autouse=True)
def no_known_locations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever is installed on this machine stays out of the lookups under test."""
    monkeypatch.setattr(browser, "KNOWN_LOCATIONS", ())


def test_an_explicit_path_wins(tmp_path: Path) -> None:
    chosen = _fake_browser(tmp_path / "mine", "my-chrome")
    _fake_browser(tmp_path / "bin", "chromium")

    assert find_browser({"BROWSER_PATH": str(chosen), "PATH": str(tmp_path / "bin")}) == chosen
    assert find_browser({"CHROME_PATH": str(chosen), "PATH": str(tmp_path / "bin")}) == chosen


def test_a_wrong_explicit_path_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    _fake_browser(tmp_path / "bin", "chromium")

    with pytest.raises(BrowserNotFound, match="BROWSER_PATH=/nowhere/chrome is not an executable"):
        find_browser({"BROWSER_PATH": "/nowhere/chrome", "PATH": str(tmp_path / "bin")})


@pytest.mark.parametrize("name", browser.PATH_NAMES)
def test_each_usual_name_on_path_is_found(tmp_path: Path, name: str) -> None:
    found = _fake_browser(tmp_path / "bin", name)

    assert find_browser({"PATH": str(tmp_path / "bin")}) == found


def test_a_known_location_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = _fake_browser(tmp_path / "Google Chrome.app" / "Contents" / "MacOS", "Google Chrome")
    monkeypatch.setattr(browser, "KNOWN_LOCATIONS", (str(app),))

    assert find_browser({"PATH": str(tmp_path / "empty")}) == app


def test_nothing_found_is_one_line_saying_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(BrowserNotFound) as missing:
        find_browser({"PATH": str(tmp_path / "empty")})

    message = str(missing.value)
    assert "\n" not in message
    assert "install Google Chrome or Chromium" in message
    assert "BROWSER_PATH" in message


def test_ensure_installs_nothing_where_it_cannot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.delenv("CHROME_PATH", raising=False)
    monkeypatch.setattr(browser, "can_install", lambda: False)
    monkeypatch.setattr(browser.subprocess, "run", lambda *a, **k: pytest.fail("tried to install"))

    with pytest.raises(BrowserNotFound):
        ensure_browser()


def test_the_cli_fails_with_exit_1_and_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.delenv("CHROME_PATH", raising=False)
    monkeypatch.setattr(browser, "can_install", lambda: False)

    assert browser.main(["ensure"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: no Chrome/Chromium found")
