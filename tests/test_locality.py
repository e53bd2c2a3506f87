"""Data locality on real worker processes: a pipeline's next step runs on the GPU that holds its input."""

from __future__ import annotations

import sys

import cloudpickle
import pytest

from altlas_dask import run_on_gpu, start_cluster
from altlas_dask.config import build_config

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers can't import test modules

ITEM_BYTES = 2_000_000
CONFIG = {
    "accounting": {"database": ":memory:"},
    "cluster": {"scheduler_address": "127.0.0.1:0", "dashboard_address": "127.0.0.1:0"},
    "gpu": {
        "workload": {"queue_processing_interval": 0.05},
        # 2 MB take 2 s to move at this rate: far more than any wait on an idle pool, so the test does not
        # depend on what the pool has learned; the byte sizes stay small and the test fast.
        "multi_gpu": {"max_concurrent_tasks_per_gpu": 2, "transfer_gb_per_s": 0.001},
    },
    "simulation": {"gpus": [{"name": "Same", "memory_mb": 16000, "speed_gflops": 1000, "count": 2}]},
}


def preprocess(item: int) -> bytes:
    run_on_gpu(1)
    return bytes([item % 256]) * ITEM_BYTES


def infer(data: bytes) -> dict:
    return {**run_on_gpu(1), "first": data[0], "size": len(data)}


@pytest.fixture(scope="module")
def client():
    with start_cluster(build_config(CONFIG)) as cluster, cluster.client() as client:
        yield client


@pytest.mark.parametrize("when", ["submitted together", "submitted after the input is ready"])
def test_the_second_step_runs_on_the_gpu_that_holds_its_input_and_says_why(client, when):
    """The input is made on GPU 1 (pinned); the idle pool would put the next step on GPU 0 (ties go to the lower
    id), so only locality keeps it on GPU 1, and its explanation names the reason; Dask moved nothing."""
    pre = client.submit(preprocess, 7, pure=False, gpu_options={"specific_gpu_id": 1, "task_type": "pre"})
    if when != "submitted together":
        pre.result()
    step = client.submit(infer, pre, pure=False, gpu_options={"task_type": f"infer-{when}"})
    result = step.result(timeout=60)
    assert (result["first"], result["size"]) == (7, ITEM_BYTES)
    decision = client.explain(step)
    assert result["gpu"] == decision["gpu"] == 1, decision
    assert decision["strategy"] == "earliest_finish"
    assert "2 of its 2 MB of inputs already there" in decision["reason"], decision
    assert "data locality: stays with its inputs (moving them to GPU 0 would take 2000 ms" in decision["reason"]
    assert len(client.who_has(pre)[pre.key]) == 1  # Dask never copied the input to another worker
