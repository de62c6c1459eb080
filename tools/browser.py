"""The Chrome/Chromium the UI test drives (tests/e2e/test_ui_browser.py), found wherever it is installed.

    python3 -m tools.browser            print the browser found, or one line saying what to install (exit 1)
    python3 -m tools.browser ensure     the same, but install Debian's chromium first when none is found
                                        and this machine can (Debian/Ubuntu with apt-get, as root or with sudo)

Looked for, in order: $BROWSER_PATH, $CHROME_PATH (an explicit choice wins; a wrong one is an error, not
a fallback), then on PATH chromium, chromium-browser, google-chrome, google-chrome-stable, chrome, then
the usual macOS application bundles. Playwright's own browser download is never used. Standard library
only: `make browser` runs it before the venv exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ENV_VARS = ("BROWSER_PATH", "CHROME_PATH")
PATH_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
KNOWN_LOCATIONS = (
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
    "/Applications/Chromium.app/Contents/MacOS/Chromium",
    "~/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
    "~/Applications/Chromium.app/Contents/MacOS/Chromium",
    "/usr/bin/chromium",
    "/usr/bin/google-chrome",
    "/opt/google/chrome/chrome",
)
INSTALL_SCRIPT = Path(__file__).resolve().parent / "install_browser.sh"
WHAT_TO_INSTALL = (
    "no Chrome/Chromium found (looked at $BROWSER_PATH, $CHROME_PATH, PATH: "
    + ", ".join(PATH_NAMES)
    + ", and the usual macOS/Linux locations): install Google Chrome or Chromium "
    "(macOS: `brew install --cask google-chrome`; Debian/Ubuntu: `sudo apt-get install chromium`; "
    "Fedora: `sudo dnf install chromium`) or set BROWSER_PATH=/path/to/chrome"
)


class BrowserNotFound(RuntimeError):
    """No usable browser; the message is the one line that says what to install or set."""


def _executable(path: str | Path) -> bool:
    path = Path(path).expanduser()
    return path.is_file() and os.access(path, os.X_OK)


def find_browser(env: dict[str, str] | None = None) -> Path:
    """The browser's executable; raises BrowserNotFound with one line saying what to do."""
    env = os.environ if env is None else env
    for name in ENV_VARS:
        value = env.get(name)
        if value:
            if not _executable(value):
                raise BrowserNotFound(
                    f"{name}={value} is not an executable file: point it at Chrome/Chromium"
                )
            return Path(value).expanduser()
    for name in PATH_NAMES:
        found = shutil.which(name, path=env.get("PATH", os.defpath))
        if found:
            return Path(found)
    for location in KNOWN_LOCATIONS:
        if _executable(location):
            return Path(location).expanduser()
    raise BrowserNotFound(WHAT_TO_INSTALL)


def can_install() -> bool:
    """Debian or Ubuntu with apt-get, and root or sudo: where tools/install_browser.sh works."""
    try:
        os_release = Path("/etc/os-release").read_text()
    except OSError:
        return False
    fields = dict(line.split("=", 1) for line in os_release.splitlines() if "=" in line)
    family = f"{fields.get('ID', '')} {fields.get('ID_LIKE', '')}".replace('"', "").split()
    debian_like = "debian" in family or "ubuntu" in family
    privileged = os.geteuid() == 0 or shutil.which("sudo") is not None
    return debian_like and shutil.which("apt-get") is not None and privileged


def ensure_browser() -> Path:
    """find_browser, installing Debian's chromium first when none is found and this machine can."""
    try:
        return find_browser()
    except BrowserNotFound:
        if not can_install():
            raise
    subprocess.run(["bash", str(INSTALL_SCRIPT)], check=True)
    return find_browser()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["ensure"]):
        print("usage: python3 -m tools.browser [ensure]", file=sys.stderr)
        return 2
    try:
        browser = ensure_browser() if args == ["ensure"] else find_browser()
    except BrowserNotFound as missing:
        print(f"error: {missing}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as failed:
        print(
            f"error: {INSTALL_SCRIPT.name} failed (exit {failed.returncode}); {WHAT_TO_INSTALL}",
            file=sys.stderr,
        )
        return 1
    print(f"browser for the UI test: {browser}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
