"""The console when its scheduler is not there: never there (a wrong address), or gone and back (an outage)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import free_port, wait_for
from console_helpers import (
    TIMEOUT_MS,
    USER,
    VIEWPORT,
    go,
    main,
    metric,
    needs_chromium,
    no_errors,
    sign_in,
    start_console,
    stop,
)

pytestmark = needs_chromium


def test_console_wrong_scheduler_is_a_clear_error(
    page: Any, tmp_path: Path, console_home: Path, tokens: dict[str, str]
) -> None:
    nowhere = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    proc, url = start_console(nowhere, tmp_path / "console.log", console_home)
    try:
        page.goto(url)
        sign_in(page, tokens[USER])
        for title in ("GPUs", "Submit", "Tasks", "Reports"):
            if title != "GPUs":
                page.get_by_test_id("stSidebarNav").get_by_role("link", name=title).click()
            page.get_by_role("heading", name=title, exact=True).wait_for()
            alert = page.locator('[data-testid="stAlertContentError"]').filter(has_text="Cannot reach the scheduler")
            alert.wait_for()
            assert nowhere in alert.inner_text()
            assert "Traceback" not in page.inner_text("body")
            assert page.get_by_test_id("stException").count() == 0
    finally:
        stop(proc)


def test_console_pages_come_back_by_themselves_after_a_scheduler_outage(
    browser: Any, tmp_path: Path, console_home: Path, tokens: dict[str, str]
) -> None:
    """Two open pages while the scheduler dies and comes back, with no click: the GPUs page (its live view
    refreshes itself) and a page opened during the outage (it waits for the scheduler and reloads itself)."""
    from outage_helpers import address, bring_back, kill_scheduler, scheduler_and_worker

    def page_of() -> Any:
        page = browser.new_context(viewport=VIEWPORT).new_page()
        page.set_default_timeout(TIMEOUT_MS)
        return page

    def away(page: Any) -> Any:
        return page.locator('[data-testid="stAlertContentError"]').filter(has_text="Cannot reach the scheduler")

    with scheduler_and_worker(tmp_path) as world:
        proc, url = start_console(address(world), tmp_path / "console.log", console_home)
        gpus, tasks = page_of(), page_of()
        try:
            gpus.goto(url)
            sign_in(gpus, tokens[USER])
            wait_for(lambda: metric(gpus, "Active GPUs") == "1 / 1", timeout=120, what="the GPU on the GPUs page")
            kill_scheduler(world)
            away(gpus).wait_for()  # the live view says it, in one line
            tasks.goto(url)
            sign_in(tasks, tokens[USER])
            go(tasks, "Tasks")
            away(tasks).wait_for()
            assert "retries every" in away(tasks).inner_text()
            bring_back(world, "worker-b")
            for page in (gpus, tasks):
                away(page).wait_for(state="detached")  # no click: each page came back by itself
            wait_for(lambda: metric(gpus, "Active GPUs") == "1 / 1", timeout=120, what="the GPU again")
            main(tasks).get_by_test_id("stMetricLabel").get_by_text("Tasks", exact=True).wait_for()
            for page in (gpus, tasks):
                no_errors(page)
        finally:
            for page in (gpus, tasks):
                page.context.close()
            stop(proc)
