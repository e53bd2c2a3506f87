"""The Streamlit console in a real headless Chromium: `altlas-dask console` against the shared cluster.

Walks GPUs -> Submit -> Tasks -> Reports -> GPUs -> cancel a task the way a person would (sidebar
links, one browser session) and saves {gpus,submit,tasks,reports}.png on the way: into a temp folder,
or into $SCREENSHOTS_DIR (``make screenshots`` sets docs/screenshots: the README's pictures).
"""

from __future__ import annotations

import csv
import io
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from console_helpers import (
    USER,
    busy_card,
    choose,
    go,
    gpu_cards,
    grid_rows,
    main,
    metric,
    needs_chromium,
    no_errors,
    sign_in,
)

from altlas_dask.ops.launcher import GpuCluster

pytestmark = needs_chromium


def submit_run(page: Any, *, count: int, work_gflop: float) -> str:
    """Fill in the Submit form, press Submit; the run's name (``modelled-xxxxxxxx``)."""
    form = page.get_by_test_id("stForm")
    form.get_by_label("Count", exact=True).fill(str(count))
    form.get_by_label("work_gflop", exact=True).fill(str(work_gflop))
    before = set(re.findall(r"modelled-[0-9a-f]{8}", main(page).inner_text()))
    form.get_by_role("button", name="Submit", exact=True).click()
    return wait_for(
        lambda: next(iter(set(re.findall(r"modelled-[0-9a-f]{8}", main(page).inner_text())) - before), None),
        timeout=60,
        what="the new run on the Submit page",
    )


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $SCREENSHOTS_DIR (``make screenshots``), else a temp folder (tests never rewrite
    the committed pictures)."""
    chosen = os.environ.get("SCREENSHOTS_DIR")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shot(page: Any, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / f"{name}.png"))


# -- tests ----------------------------------------------------------------------------------------------


def test_console_submit_tasks_reports_gpus(
    page: Any, console_url: str, gpu_cluster: GpuCluster, screenshots: Path, tokens: dict[str, str]
) -> None:
    started = time.monotonic()
    page.goto(console_url)
    sign_in(page, tokens[USER])
    page.get_by_role("heading", name="GPUs", exact=True).wait_for()
    wait_for(lambda: gpu_cards(page).count() == len(gpu_cluster.gpus), timeout=60, what="a card per GPU")

    # Submit: bad input is a clear error, then 8 small modelled tasks run to completion.
    go(page, "Submit")
    form = page.get_by_test_id("stForm")
    form.get_by_label("Submit as", exact=True).fill("not a user!")
    form.get_by_role("button", name="Submit", exact=True).click()
    alert = page.locator('[data-testid="stAlertContentError"]').filter(has_text="Invalid GPU options")
    alert.wait_for()
    assert "gpu_options.user" in alert.inner_text()
    form.get_by_label("Submit as", exact=True).fill(USER)
    run = submit_run(page, count=8, work_gflop=5)
    box = page.locator(f".st-key-run-{run}")
    box.get_by_text("8 / 8 calls done").wait_for()
    box.get_by_text("Done: 8 of 8 tasks completed, 0 failed, 0 cancelled").wait_for()
    per_gpu = wait_for(lambda: grid_rows(box.get_by_test_id("stDataFrame")), what="the per-GPU summary rows")
    assert sum(int(row[2]) for row in per_gpu) == 8, per_gpu  # columns: GPU, Tasks, Calls, p50, p95
    no_errors(page)
    shot(page, screenshots, "submit")

    # Tasks: this user's 8 tasks, all completed, each explained.
    go(page, "Tasks")
    page.get_by_text("Explain task").wait_for()
    assert metric(page, "Tasks") == "8"
    assert metric(page, "completed") == "8"
    rows = wait_for(lambda: grid_rows(main(page).get_by_test_id("stDataFrame").first), what="the task rows")
    ours = [row for row in rows if row and row[0].startswith(run)]
    assert len(ours) == 8, rows  # columns: key, status, queue #, waiting / result, user, gpu, ...
    assert {row[1] for row in ours} == {"completed"}
    assert {row[4] for row in ours} == {USER}
    assert all(row[3].startswith("{") for row in ours), ours  # this session's results: the workload's dicts
    explanation = page.locator(".st-key-task-explanation")
    explanation.get_by_text("Why:").wait_for()
    assert re.search(r"completed · GPU \d", explanation.inner_text())
    no_errors(page)
    shot(page, screenshots, "tasks")

    # Reports: per-GPU and per-user tables over the default window.
    go(page, "Reports")
    page.get_by_role("heading", name="Per GPU").wait_for()
    assert metric(page, "Completed") == "8"
    tables = main(page).get_by_test_id("stDataFrame")
    wait_for(lambda: tables.count() == 2, what="the per-GPU and per-user tables")
    per_user = wait_for(lambda: grid_rows(tables.nth(1)), what="the per-user rows")
    assert [row[:3] for row in per_user] == [[USER, "8", "8"]], per_user
    page.get_by_role("heading", name=re.compile("Completed tasks per")).wait_for()
    with page.expect_download() as download:  # the same export as `altlas-dask report --by user --format csv`
        main(page).get_by_role("button", name="CSV", exact=True).click()
    exported = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [(row["user"], row["tasks"], row["completed"]) for row in exported] == [(USER, "8", "8")], exported
    no_errors(page)
    shot(page, screenshots, "reports")

    # GPUs again, with a longer run going so the cards and the chart have something to show.
    go(page, "Submit")
    busy = submit_run(page, count=16, work_gflop=1500)
    go(page, "GPUs")
    wait_for(lambda: gpu_cards(page).count() == 4, what="a card per GPU")
    wait_for(lambda: int(metric(page, "On a GPU")) > 0, timeout=30, what="tasks on a GPU on the GPUs page")
    page.get_by_role("heading", name="Last 5 min").wait_for()
    wait_for(  # the run shows in the cards (and the time series has samples of it)
        lambda: sum(busy_card(c) for c in gpu_cards(page).all_inner_texts()) >= 2,
        timeout=60,
        what="two GPU cards showing the busy run's utilization",
    )
    assert gpu_cards(page).count() == 4
    for gpu in gpu_cluster.gpus:
        card = page.locator(f".st-key-gpu-card-{gpu.id}")
        assert f"GPU {gpu.id}" in card.inner_text() and gpu.name in card.inner_text()
    no_errors(page)
    shot(page, screenshots, "gpus")
    go(page, "Submit")
    page.locator(f".st-key-run-{busy}").get_by_text("16 / 16 calls done").wait_for()

    # Cancel: a long task, cancelled from the Tasks page; its run on the Submit page says so.
    long_run = submit_run(page, count=1, work_gflop=1_000_000)
    go(page, "Tasks")
    choose(page, "Status", "running")
    choose(page, "Explain task", f"{long_run}-00000 (running)")
    page.get_by_role("button", name="Cancel task").click()
    page.get_by_text(f"Task {long_run}-00000: cancelled").wait_for()
    go(page, "Submit")
    page.locator(f".st-key-run-{long_run}").get_by_text("0 failed, 1 cancelled").wait_for()
    no_errors(page)
    print(f"console walk-through took {time.monotonic() - started:.1f}s")


def test_console_drained_gpu_true_counts_queue_and_results(
    page: Any, console_url: str, gpu_cluster: GpuCluster, screenshots: Path, tokens: dict[str, str]
) -> None:
    """A drained GPU's badge and reason; a generated text in the run and the task's explanation; a too-big
    task refused before submission; true counts past "Show at most", queue positions and waiting reasons."""
    from altlas_dask.client.gpu_client import Client
    from altlas_dask.client.runs import submit_workload

    admin = Client(gpu_cluster.scheduler_address, gpu_defaults={"user": "admin"}, timeout=30, set_as_default=False)
    mine = Client(gpu_cluster.scheduler_address, gpu_defaults={"user": USER}, timeout=30, set_as_default=False)
    held = None
    try:
        admin.drain_gpu(0, reason="firmware update")
        page.goto(console_url)
        sign_in(page, tokens[USER])
        card = page.locator(".st-key-gpu-card-0")
        card.get_by_text("firmware update").wait_for()
        assert "drained" in card.inner_text() and "healthy" not in card.inner_text()
        assert "healthy" in page.locator(".st-key-gpu-card-1").inner_text()
        no_errors(page)

        # Submit: a task no GPU can hold is refused with the reason; a generate run shows its text.
        go(page, "Submit")
        choose(page, "Workload", "modelled")
        form = page.get_by_test_id("stForm")
        form.get_by_label("memory_mb", exact=True).fill("999999")
        form.get_by_role("button", name="Submit", exact=True).click()
        refused = page.locator('[data-testid="stAlertContentError"]').filter(has_text="No GPU can ever take")
        refused.wait_for()
        assert "999999 MB" in refused.inner_text() and "Nothing was submitted" in refused.inner_text()
        choose(page, "Workload", "generate")
        form.get_by_label("Count", exact=True).fill("1")
        form.get_by_label("text", exact=True).fill("The GPU")
        before = set(re.findall(r"generate-[0-9a-f]{8}", main(page).inner_text()))
        form.get_by_role("button", name="Submit", exact=True).click()
        run = wait_for(
            lambda: next(iter(set(re.findall(r"generate-[0-9a-f]{8}", main(page).inner_text())) - before), None),
            timeout=60,
            what="the generate run",
        )
        results = page.locator(f".st-key-run-results-{run}")
        results.wait_for()
        generated = results.inner_text().split(f"{run}-00000: ", 1)[1].strip()
        assert len(generated) > 20 and not generated.startswith("{"), results.inner_text()  # the text, not a dict

        # Tasks: the explanation of the selected task carries its result.
        go(page, "Tasks")
        choose(page, "Explain task", f"{run}-00000 (completed)")
        explanation = page.locator(".st-key-task-explanation")
        explanation.get_by_text("Result:").wait_for()
        assert f"{run}-00000" in explanation.inner_text() and generated[:20] in explanation.inner_text()

        # A queue: one slot for this user, one long task in it, 12 waiting; the page shows at most 10.
        admin.set_quota(USER, concurrent_requests=1)
        held = submit_workload(mine, "modelled", 13, params={"work_gflop": 1_000_000.0, "memory_mb": 64})
        wait_for(lambda: len(mine.tasks(status="queued")) == 12, what="12 queued tasks")
        assert held.gpu_options["cost"] == 1_000_000.0  # the console's submissions state their size (GFLOP)
        assert mine.explain(held.futures[-1])["cost"] == 1_000_000.0
        choose(page, "Status", "queued")
        main(page).get_by_label("Show at most", exact=True).fill("10")
        main(page).get_by_label("Show at most", exact=True).press("Enter")
        choose(page, "Order", "queue position")
        page.get_by_text("Showing 10 of 12 matching tasks, ordered by queue position").wait_for()
        assert metric(page, "queued") == "12"
        rows = wait_for(  # the grid re-renders after the caption: wait for the filtered rows, not the last ones
            lambda: (r := grid_rows(main(page).get_by_test_id("stDataFrame").first)) and len(r) == 10 and r,
            what="the 10 queued rows",
        )
        assert [row[1] for row in rows] == ["queued"] * 10
        assert [row[2] for row in rows] == [str(n) for n in range(1, 11)], rows  # queue # in order
        assert all("concurrency limit" in row[3] for row in rows), rows  # every one says why it waits
        third = rows[2][0]
        choose(page, "Explain task", f"{third} (queued)")
        explanation.get_by_text("queue #3").wait_for()
        text = explanation.inner_text()
        assert text.startswith(third) and "Waiting:" in text and "concurrency limit" in text
        no_errors(page)
        shot(page, screenshots, "tasks-queue")
    finally:
        if held is not None:
            held.cancel()
        admin.set_quota(USER, concurrent_requests=1024)
        admin.enable_gpu(0)
        mine.close()
        admin.close()


def test_console_runs_as_a_signed_in_key_and_offers_admin_views_only_to_admins(
    page: Any, console_url: str, tokens: dict[str, str]
) -> None:
    """No user picker: a key per browser session; a wrong key, another user's name, a user's view."""
    page.goto(console_url)
    page.get_by_text("Sign in: enter your API key in the sidebar").wait_for()
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_label("API key", exact=True).fill("ak_000000000000_not-a-real-key-at-all")
    sidebar.get_by_label("API key", exact=True).press("Enter")
    sidebar.get_by_text("Invalid or revoked API key.").wait_for()
    sign_in(page, tokens[USER])
    assert "(user)" in sidebar.inner_text()
    go(page, "Submit")
    form = page.get_by_test_id("stForm")
    form.get_by_label("Submit as", exact=True).fill("admin")
    form.get_by_role("button", name="Submit", exact=True).click()
    page.get_by_text(f"{USER!r} may submit only as themself").wait_for()
    go(page, "Tasks")
    assert main(page).get_by_label("User", exact=True).is_disabled()  # a user sees only their own tasks
    sidebar.get_by_role("button", name="Sign out").click()
    sign_in(page, tokens["boss"], "boss")
    assert "(admin)" in sidebar.inner_text()
    go(page, "Tasks")
    assert main(page).get_by_label("User", exact=True).is_enabled()  # the admin view: anyone's tasks
