"""``GET /metrics`` counts every task the REST API calls queued, tasks waiting for a retry included."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any
from unittest.mock import create_autospec

from altlas_dask.api import metrics
from altlas_dask.api.gpu_list import GpuList
from altlas_dask.api.link import SchedulerLink
from altlas_dask.client.router_client import RouterClient
from altlas_dask.protocol import API_STATUS, TaskStatus

# one task in every router status; the REST API's "queued" ones are QUEUED and RETRYING by its own table
TRACKED = {status.value: 1 for status in TaskStatus if not status.final}
EXPECTED_QUEUED = sum(1 for status in TRACKED if API_STATUS[TaskStatus(status)] == "queued")
NOTHING_FINISHED = {"status": {}, "durations": [], "gpus": [], "models": [], "users": []}


def stand_in_gateway() -> Any:
    router = create_autospec(RouterClient, instance=True)
    router.status.return_value = {"tracked": TRACKED}
    router.finished.return_value = NOTHING_FINISHED

    async def tasks(user: str | None = None, status: str | None = None, limit: int = 100, **_: Any) -> Any:
        rows = [{"status": status, "task_type": "chat", "user": "ana"}] * TRACKED.get(status, 0)
        return {"tasks": rows if limit else [], "total": len(rows)}

    router.tasks.side_effect = tasks
    link = create_autospec(SchedulerLink, instance=True)
    link.router.return_value = router

    async def ask(reply: Any) -> Any:
        return await reply

    link.ask.side_effect = ask
    gpus = create_autospec(GpuList, instance=True)
    gpus.read.return_value = []
    return SimpleNamespace(link=link, gpus=gpus, request_batcher=None)


def test_queued_requests_include_tasks_waiting_for_a_retry():
    assert EXPECTED_QUEUED == 2  # queued and retrying, read from the lifecycle's own table
    for is_admin in (True, False):
        summary = asyncio.run(
            metrics.summary(stand_in_gateway(), metrics.HttpStats(), user="ana", is_admin=is_admin, window_s=60)
        )
        assert summary["system"]["queued_requests"] == EXPECTED_QUEUED, (is_admin, summary["system"])
