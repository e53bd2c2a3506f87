"""What the console's browser tests share: a console process, a headless Chromium, API keys, page helpers.

The tests are in three files so that a parallel run (make test) runs them side by side: test_console.py (the
walk-through on the shared cluster), test_console_totals.py (2,000 tasks), test_console_outage.py (a scheduler
that dies or was never there). tests/conftest.py loads this module as a plugin, so its fixtures serve every file
(module-scoped ones once per file); playwright is imported only when a test asks for a browser.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import cli_command, cli_env, free_port, wait_for

from altlas_dask.accounting.api_keys import KeyStore
from altlas_dask.ops.launcher import GpuCluster

CHROMIUM = Path("/usr/bin/chromium") if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
USER = "console-ui"  # a user of its own: as a non-admin it sees only the tasks this test submits
VIEWPORT = {"width": 1400, "height": 1500}
TIMEOUT_MS = 120_000  # generous: CI machines with 2 busy cores render slowly

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian chromium (make system-deps)")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_console(scheduler: str, log: Path, home: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``altlas-dask console`` on a free loopback port, its state (API keys) in ``home``; returns once
    /_stcore/health answers."""
    port = free_port()
    env = cli_env()
    env["ALTLAS_HOME"] = str(home)
    env["ALTLAS_CONNECT_TIMEOUT"] = "1"  # the wait before "Cannot reach the scheduler" (5 s by default)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cli_command(), "console", "--scheduler", scheduler, "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the console exited with {proc.returncode}:\n{log.read_text()}")
        return healthy(url)

    try:
        wait_for(up, timeout=90, interval=0.25, what=f"the console's health endpoint on {url}")
    except BaseException:
        stop(proc)
        raise
    return proc, url


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def console_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console-home")


@pytest.fixture(scope="module")
def tokens(console_home: Path) -> dict[str, str]:
    """API keys in the console's key store (the repo config's accounting.api_keys: api_keys.sqlite in its home)."""
    keys = KeyStore(console_home / "api_keys.sqlite")
    return {USER: keys.create(USER)[1], "boss": keys.create("boss", "admin")[1]}


@pytest.fixture(scope="module")
def console_url(
    gpu_cluster: GpuCluster, tmp_path_factory: pytest.TempPathFactory, console_home: Path, tokens: dict[str, str]
) -> Iterator[str]:
    log = tmp_path_factory.mktemp("console") / "console.log"
    proc, url = start_console(gpu_cluster.scheduler_address, log, console_home)
    try:
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    playwright = sync_api.sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        yield page
    finally:
        context.close()


# -- helpers ------------------------------------------------------------------------------------------


def sign_in(page: Any, token: str, user: str = USER) -> None:
    """Enter an API key in the sidebar, once per browser session."""
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_label("API key", exact=True).fill(token)
    sidebar.get_by_label("API key", exact=True).press("Enter")
    sidebar.get_by_text(f"Signed in as {user}").wait_for()


def go(page: Any, title: str) -> None:
    """Open a page through its sidebar link (client-side: the session and its runs stay)."""
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=title).click()
    page.get_by_role("heading", name=title, exact=True).wait_for()


def main(page: Any) -> Any:
    return page.get_by_test_id("stMain")


def no_errors(page: Any) -> None:
    body = page.inner_text("body")
    assert "Traceback" not in body
    assert page.get_by_test_id("stException").count() == 0
    errors = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
    assert not errors, errors


def grid_rows(dataframe: Any) -> list[list[str]]:
    """The visible rows of an st.dataframe, read from its accessibility cells (glide-cell-COL-ROW)."""
    cells = dataframe.evaluate(
        """el => Array.from(el.querySelectorAll('[data-testid^="glide-cell-"]')).map(
               c => [c.dataset.testid.split('-').slice(2).map(Number), c.textContent])"""
    )
    rows: dict[int, dict[int, str]] = {}
    for (col, row), text in cells:
        rows.setdefault(row, {})[col] = text
    return [[cols[c] for c in sorted(cols)] for _, cols in sorted(rows.items())]


def metric(page: Any, label: str) -> str:
    named = page.get_by_test_id("stMetricLabel").get_by_text(label, exact=True)
    return main(page).get_by_test_id("stMetric").filter(has=named).first.get_by_test_id("stMetricValue").inner_text()


def choose(page: Any, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label`` on the main page."""
    main(page).get_by_label(label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()


def gpu_cards(page: Any) -> Any:
    return page.locator('[class*="st-key-gpu-card-"]')


def busy_card(text: str) -> bool:
    return "Utilization" in text and re.search(r"Utilization\s+0 %", text) is None


def metrics_shown(page: Any) -> dict[str, int]:
    """Every metric on the main page: label -> its number."""
    values = (
        main(page)
        .get_by_test_id("stMetric")
        .evaluate_all(
            """els => els.map(e => [e.querySelector('[data-testid="stMetricLabel"]').innerText,
                               e.querySelector('[data-testid="stMetricValue"]').innerText])"""
        )
    )
    return {label.strip(): int(value.replace(",", "")) for label, value in values}
