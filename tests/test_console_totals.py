"""The console's Tasks page counts against the REST API's while 2,000 tasks run (the shared cluster)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from conftest import wait_for
from console_helpers import go, metrics_shown, needs_chromium, no_errors, sign_in

from altlas_dask.accounting.api_keys import KeyStore
from altlas_dask.ops.launcher import GpuCluster
from altlas_dask.worker.kernels import run_on_gpu

pytestmark = needs_chromium


def test_tasks_page_totals_match_the_rest_api_while_2000_tasks_run(
    page: Any, console_url: str, gpu_cluster: GpuCluster, console_home: Path, repo_config: Any
) -> None:
    """2,000 tasks of one user run; each time the Tasks page is read between two REST reads, its completed
    count lies between theirs and its queued count too (both pages ask the router the same question), and
    the page names the window its counts cover."""
    import threading

    import httpx
    import uvicorn

    from altlas_dask.api import ApiSettings, create_app
    from altlas_dask.client.gpu_client import Client

    keys = KeyStore(console_home / "api_keys.sqlite")
    user = "counter"
    token = keys.create(user)[1]
    app = create_app(gpu_cluster.scheduler_address, repo_config, ApiSettings(warm_up=False), keys=keys)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    rest = httpx.Client(
        base_url=f"http://127.0.0.1:{sock.getsockname()[1]}/api/v1",
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    submitter = Client(gpu_cluster.scheduler_address, gpu_defaults={"user": user}, timeout=30, set_as_default=False)

    def rest_counts() -> dict[str, int]:
        return {
            s: rest.get("/tasks", params={"status": s, "limit": 1}).json()["total"] for s in ("completed", "queued")
        }

    try:
        wait_for(lambda: server.started, timeout=60, what="the REST API")
        futures = submitter.map(run_on_gpu, [100.0] * 2000, pure=False)  # 2,000 tasks of 0.05-0.2 s alone
        page.goto(console_url)
        sign_in(page, token, user)
        for _ in range(3):
            before = rest_counts()
            go(page, "GPUs")
            go(page, "Tasks")
            page.get_by_text("Counted: the tasks still live").wait_for()
            shown = metrics_shown(page)
            after = rest_counts()
            assert before["completed"] <= shown.get("completed", 0) <= after["completed"], (before, shown, after)
            queued = shown.get("queued", 0) + shown.get("retrying", 0)  # REST's "queued" holds both
            assert before["queued"] >= queued >= after["queued"], (before, shown, after)
        submitter.gather(futures)
        window = repo_config.accounting.recent_records
        page.get_by_text(f"the cluster's last {window:,} finished").wait_for()
        final = rest_counts()
        go(page, "GPUs")
        go(page, "Tasks")
        page.get_by_text("Counted: the tasks still live").wait_for()
        assert metrics_shown(page).get("completed") == final["completed"] and 0 < final["completed"] <= window
        no_errors(page)
    finally:
        submitter.close()
        rest.close()
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
