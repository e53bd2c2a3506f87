"""``GET /metrics`` counts every task the REST API calls queued, tasks waiting for a retry included."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import create_autospec

from altlas_dask.api import metrics
from altlas_dask.api.gateway import Gateway
from altlas_dask.protocol import API_STATUS, TaskStatus

# one task in every router status; the REST API's "queued" ones are QUEUED and RETRYING by its own table
TRACKED = {status.value: 1 for status in TaskStatus if not status.final}
EXPECTED_QUEUED = sum(1 for status in TRACKED if API_STATUS[TaskStatus(status)] == "queued")


def stand_in_gateway(tmp_path: Path) -> Gateway:
    gateway = create_autospec(Gateway, instance=True)
    gateway.config = SimpleNamespace(accounting=SimpleNamespace(database=str(tmp_path / "none.sqlite")))
    gateway.request_batcher = None

    async def gpus(max_age: float | None = None) -> list[dict[str, Any]]:
        return []

    async def rpc(handler: str, **kwargs: Any) -> Any:
        if handler == "altlas_status":
            return {"tracked": TRACKED}
        assert handler == "altlas_tasks", handler
        status = kwargs["status"]
        rows = [{"status": status, "task_type": "chat", "user": "ana"}] * TRACKED.get(status, 0)
        return {"tasks": rows if kwargs["limit"] else [], "total": len(rows)}

    gateway.gpus.side_effect = gpus
    gateway.rpc.side_effect = rpc
    gateway.acting_admin.side_effect = lambda user: user
    return gateway


def test_queued_requests_include_tasks_waiting_for_a_retry(tmp_path: Path):
    assert EXPECTED_QUEUED == 2  # queued and retrying, read from the lifecycle's own table
    for is_admin in (True, False):
        summary = asyncio.run(
            metrics.summary(
                stand_in_gateway(tmp_path), metrics.HttpStats(), user="ana", is_admin=is_admin, window_s=60
            )
        )
        assert summary["system"]["queued_requests"] == EXPECTED_QUEUED, (is_admin, summary["system"])
