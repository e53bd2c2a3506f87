"""The gateway's bookkeeping against a real, in-process Dask scheduler that goes away (no HTTP, no router).

A task whose future Dask dropped because the scheduler connection broke must read ``failed`` with that
reason on every surface, never ``cancelled`` (users cancel through the router, which is a different outcome).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conftest import local_config
from distributed import Client, Scheduler

from altlas_dask.api.gateway import Gateway
from altlas_dask.api.registry import TaskEntry
from altlas_dask.api.settings import ApiSettings


def _blocked(event_name: str) -> str:
    """Never runs: the scheduler has no worker."""
    return event_name


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_a_task_lost_with_the_scheduler_is_failed_with_the_reason_everywhere():
    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        scheduler = await Scheduler(host="127.0.0.1", port=0, dashboard_address=":0", validate=False)
        client = await Client(scheduler.address, asynchronous=True, set_as_default=False, timeout=5)
        gateway = Gateway(client, local_config(), ApiSettings())
        try:
            future = client.submit(_blocked, "x", key="generate-lost-1", pure=False)
            gateway.registry.remember(TaskEntry(future.key, "alice", "predict", "generate", future, time.time()))
            await scheduler.close()  # the scheduler goes away with the task pending
            while not future.done():
                await asyncio.sleep(0.01)
            described = await gateway.states.describe(future.key, "alice", False)
            assert described["status"] == "failed", described  # GET /task/{id}
            entry = gateway.registry.tasks[future.key]
            listed = await gateway.states.state(entry, None)  # /predict, /batch_predict, /batches
            return described, listed
        finally:
            await client.close()

    described, listed = run(main())
    for state in (described, listed):
        assert state["status"] == "failed", state
        assert "scheduler" in state["error"], state
