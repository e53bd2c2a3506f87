"""The router's task feed (scheduler_plugins/task_feed.py) on a real in-process scheduler with the router and no
worker (every GPU task is held): nothing is published while nobody subscribes; a subscriber gets, once per
scheduler turn, the records of the tasks that changed in it."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import local_config
from distributed import Scheduler

from altlas_dask.client.gpu_client import Client
from altlas_dask.scheduling.feed import FIELDS, TOPIC
from scheduler_plugins.gpu_router import GpuRouter
from scheduler_plugins.task_feed import NAME


def held(i: int) -> int:
    """Never runs: the scheduler has no worker."""
    return i


def test_the_feed_publishes_only_to_subscribers_one_message_per_turn():
    async def main() -> tuple[int, list[dict[str, Any]]]:
        scheduler = await Scheduler(host="127.0.0.1", port=0, dashboard_address=":0", validate=False)
        await scheduler.register_scheduler_plugin(GpuRouter(local_config()), name="altlas-router", idempotent=False)
        client = await Client(scheduler.address, asynchronous=True, set_as_default=False, timeout=10)
        feed = scheduler.plugins[NAME]
        try:
            unheard = client.submit(held, 0, pure=False, gpu_options={"user": "ana"})
            await client.router.explain([unheard.key])  # after the submission: the router has seen it
            before = feed.published
            got: list[dict[str, Any]] = []
            arrived = asyncio.Event()
            client.subscribe_topic(TOPIC, lambda event: (got.append(event[1]), arrived.set()))
            await client.router.gpus()  # the subscription travels before this call's answer comes back
            burst = client.map(held, range(5), pure=False, gpu_options={"user": "ana"})
            await asyncio.wait_for(arrived.wait(), 30)
            assert {f.key for f in burst} <= set(got[0]), got  # the 5 submissions of one turn: one message
            return before, got
        finally:
            await client.close()
            await scheduler.close()

    before, got = asyncio.run(asyncio.wait_for(main(), 60))
    assert before == 0  # nobody listened: nothing was published
    record = next(iter(got[0].values()))
    assert set(record) <= set(FIELDS) and record["user"] == "ana" and record["status"] == "queued", record
