"""Pre-placement (``gpu.multi_gpu.prefetch_depth``) on a real cluster: tasks placed on a GPU's worker beyond its
slots wait there, and the worker starts them in the router's order (priority first), not in submission order."""

from __future__ import annotations

import sys
import time

import cloudpickle
import distributed
from conftest import wait_for

from altlas_dask import start_cluster
from altlas_dask.config import build_config

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers can't import test modules

CONFIG = {
    "accounting": {"database": ":memory:"},
    "cluster": {"scheduler_address": "127.0.0.1:0", "dashboard_address": "127.0.0.1:0"},
    "gpu": {
        "workload": {"queue_processing_interval": 0.05},
        "multi_gpu": {"max_concurrent_tasks_per_gpu": 1, "prefetch_depth": 2},
    },
    "simulation": {"gpus": [{"name": "Only", "memory_mb": 16000, "speed_gflops": 1000, "count": 1}]},
}


def gated(event: str, tag: str) -> dict:
    """Note when the worker started the task, then hold its thread until ``event`` is set."""
    start = time.time()
    distributed.Event(event).wait()
    return {"tag": tag, "start": start}


def test_pre_placed_tasks_wait_on_the_worker_and_a_later_high_priority_task_overtakes_them():
    with start_cluster(build_config(CONFIG)) as cluster, cluster.client() as client:
        wait_for(lambda: len(client.gpus()) == 1)
        first, go = distributed.Event("first", client=client), distributed.Event("go", client=client)

        def submit(tag: str, event: str, priority: int):
            return client.submit(gated, event, tag, key=tag, pure=False, gpu_options={"priority": priority})

        def tracked() -> dict:
            return client.router_status()["tracked"]

        blocker = submit("blocker", "first", 3)
        wait_for(lambda: tracked() == {"running": 1}, what="the blocker running")
        low = []
        for i, expected in enumerate(({"placed": 1}, {"placed": 2}, {"placed": 2, "queued": 1})):
            low.append(submit(f"low{i}", "go", 1))  # one at a time: placed in this order
            wait_for(lambda expected=expected: tracked() == {"running": 1, **expected}, what=f"low{i} tracked")
        high = submit("high", "go", 5)
        # one slot running, prefetch_depth 2 waiting on the worker, the rest held on the scheduler
        wait_for(lambda: tracked() == {"running": 1, "placed": 2, "queued": 2}, what="slots + depth placed")
        assert [client.explain(f)["status"] for f in (*low, high)] == ["placed", "placed", "queued", "queued"]

        first.set()  # the worker starts low0 (placed first); the freed place goes to high, ranked first there
        wait_for(lambda: client.explain(high)["status"] == "placed", what="high placed on the worker")
        go.set()
        results = {r["tag"]: r["start"] for r in client.gather([blocker, *low, high])}
        order = sorted(results, key=results.get)
        assert order == ["blocker", "low0", "high", "low1", "low2"], order
