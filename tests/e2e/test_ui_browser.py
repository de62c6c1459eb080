"""The Airflow UI in a real headless Chromium: log in through the form, see the DAG list and the grid.

The browser is whatever Chrome/Chromium tools.browser finds ($BROWSER_PATH, $CHROME_PATH, PATH, the
usual macOS locations; `make browser` installs Debian's chromium where it can), driven by Playwright
through `executable_path`; Playwright's own browser download is never used. No browser is a failure
naming what to install, never a skip. Screenshots land in test-artifacts/ui/.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Error, Page, sync_playwright

from tools import REPO_ROOT
from tools.airflow_api import AirflowApi, wait_for
from tools.airflow_env import ADMIN_USER
from tools.browser import BrowserNotFound, find_browser

SCREENSHOTS = REPO_ROOT / "test-artifacts" / "ui"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SMOKE = "platform_smoke"
UI_TIMEOUT_MS = 30_000

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class AllowedConsoleError:
    """A console error the Airflow UI itself logs, matched exactly (text and the URL it names)."""

    text: str
    url_path: str
    why: str


# Opening the UI without a session: the SPA's first call, GET /ui/config, is answered 401, and that
# answer is what sends the browser to /auth/login. Chromium logs every 4xx response as a console error.
# Allowed only before the login; after it, no console error is tolerated.
BEFORE_LOGIN_ALLOWED = (
    AllowedConsoleError(
        text="Failed to load resource: the server responded with a status of 401 (Unauthorized)",
        url_path="/ui/config",
        why="unauthenticated config probe that triggers the redirect to the login form",
    ),
)


@dataclass
class ConsoleErrors:
    """Console errors and uncaught page exceptions, in the order the browser reported them."""

    base_url: str
    seen: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.seen.append(f"{message.text} @ {message.location.get('url', '')}")

    def on_page_error(self, error: Error) -> None:
        self.seen.append(f"uncaught: {error}")

    def take(self) -> list[str]:
        """The errors seen since the last take."""
        errors, self.seen = self.seen, []
        return errors

    def unexpected(self, errors: list[str], allowed: tuple[AllowedConsoleError, ...]) -> list[str]:
        allowed_entries = {f"{a.text} @ {self.base_url}{a.url_path}" for a in allowed}
        return [e for e in errors if e not in allowed_entries]


@pytest.fixture
def chromium_page(tmp_path: Path) -> Iterator[Page]:
    try:
        browser, missing = find_browser(), None
    except BrowserNotFound as not_found:
        browser, missing = None, str(not_found)
    if missing:  # outside the except block, so the failure is that one line and nothing else
        pytest.fail(missing, pytrace=False)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=tmp_path / "chromium-profile",
            executable_path=browser,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 900},
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def test_login_dag_list_and_grid_in_a_real_browser(tmp_path: Path, start_stack, chromium_page: Page) -> None:
    dags = tmp_path / "dags"
    shutil.copytree(REPO_ROOT / "dags" / "platform", dags / "platform")
    stack, api = start_stack(dags)
    run_id = _successful_smoke_run(api)
    base = stack.api_url
    page = chromium_page
    console = ConsoleErrors(base)
    page.on("console", console.on_console)
    page.on("pageerror", console.on_page_error)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    page.goto(f"{base}/")
    page.wait_for_url(f"{base}/auth/login**")
    page.get_by_label("Username").fill(ADMIN_USER)
    page.get_by_label("Password").fill(stack.admin_password())
    page.screenshot(path=SCREENSHOTS / "login.png")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/")
    before_login = console.take()
    # Seeing the UI's own 401 probe proves console errors reach this test at all.
    assert before_login, "no console error captured before login: is the console listener working?"
    assert console.unexpected(before_login, BEFORE_LOGIN_ALLOWED) == []

    page.get_by_test_id("nav-dags-link").click()
    page.wait_for_url(f"{base}/dags")
    dag_link = page.get_by_test_id("dag-id").filter(has_text=SMOKE)
    dag_link.wait_for()
    page.screenshot(path=SCREENSHOTS / "dag_list.png")

    dag_link.click()
    page.wait_for_url(f"{base}/dags/{SMOKE}")
    page.get_by_test_id("grid-view-button").click()
    cell = page.get_by_test_id(f"grid-{run_id}-smoke")
    cell.wait_for()
    assert cell.get_attribute("href") == f"/dags/{SMOKE}/runs/{run_id}/tasks/smoke"
    page.wait_for_load_state("networkidle")
    page.screenshot(path=SCREENSHOTS / "grid.png")

    assert console.take() == []


def _successful_smoke_run(api: AirflowApi) -> str:
    """A finished run, so the grid has a cell to show."""
    api.wait_for_dag(SMOKE)
    api.set_paused(SMOKE, False)
    run_id = api.trigger(SMOKE, logical_date="2026-06-01T00:00:00Z")["dag_run_id"]
    wait_for(
        lambda: api.dag_run(SMOKE, run_id)["state"] == "success",
        timeout=90,
        interval=2,
        what=f"run {run_id} in state success",
    )
    return run_id
