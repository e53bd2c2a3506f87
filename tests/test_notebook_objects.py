"""Notebook-friendly objects: HTML reprs of the cluster, the client and batches; gpus_frame; the weighted split."""

from __future__ import annotations

import time

import pytest

from altlas_dask.client.batch_split import speed_weights, split_plan
from altlas_dask.client.gpu_client import Client
from altlas_dask.ops.launcher import GpuCluster
from altlas_dask.worker.kernels import run_on_gpu

POOL = [  # cluster.yaml's pool as GPU info with the simulated speeds
    {"id": 0, "status": "active", "speed_gflops": 2000.0},
    {"id": 1, "status": "active", "speed_gflops": 2000.0},
    {"id": 2, "status": "active", "speed_gflops": 500.0},
    {"id": 3, "status": "active", "speed_gflops": 500.0},
]


def per_gpu(plan: list[tuple[int, int]]) -> dict[int, int]:
    totals: dict[int, int] = {}
    for gpu, size in plan:
        totals[gpu] = totals.get(gpu, 0) + size
    return totals


def test_faster_gpus_get_more_of_the_batch() -> None:
    plan = split_plan(96, speed_weights(POOL), minimum=4, chunks_per_gpu=4)
    assert per_gpu(plan) == {0: 38, 1: 38, 2: 10, 3: 10}  # 4:4:1:1, whole items, adding up to 96
    assert all(size >= 4 for _, size in plan) and len(plan) == 4 + 4 + 2 + 2


def test_learned_speeds_come_first_and_equal_speeds_split_evenly() -> None:
    learned = {0: 0.5, 1: 1.0, 2: 1.0, 3: 0.5}  # e.g. GPU 0 throttled: it learned to be slower
    assert per_gpu(split_plan(60, speed_weights(POOL, learned), 1, 4)) == {0: 10, 1: 20, 2: 20, 3: 10}
    unknown = [{"id": g, "status": "active"} for g in range(4)]
    assert per_gpu(split_plan(96, speed_weights(unknown), 4, 4)) == dict.fromkeys(range(4), 24)
    drained = [*POOL[:3], {**POOL[3], "status": "maintenance"}]
    assert set(speed_weights(drained)) == {0, 1, 2}  # a drained GPU gets no share


def test_shares_under_the_minimum_go_to_faster_gpus() -> None:
    assert per_gpu(split_plan(20, speed_weights(POOL), minimum=4, chunks_per_gpu=4)) == {0: 10, 1: 10}
    assert split_plan(3, {0: 1.0, 1: 1.0}, minimum=4, chunks_per_gpu=4) == [(0, 3)]


@pytest.fixture(scope="module")
def client(gpu_cluster: GpuCluster) -> Client:
    with Client(gpu_cluster.scheduler_address, gpu_defaults={"user": "admin"}, timeout=30) as client:
        yield client


def test_gpus_frame_and_html(client: Client, gpu_cluster: GpuCluster) -> None:
    frame = client.gpus_frame()
    assert list(frame.index) == [0, 1, 2, 3]
    assert list(frame["name"]) == [g.name for g in gpu_cluster.gpus]
    assert {"condition", "reason", "memory_used_pct", "utilization_pct"} <= set(frame.columns)
    client.drain_gpu(3, reason="cooling check")
    try:
        page = client._repr_html_()
        frame = client.gpus_frame()
    finally:
        client.enable_gpu(3)
    assert frame.loc[3, "condition"] == "drained" and frame.loc[3, "reason"].startswith("cooling check")
    assert "cooling check" in page and "/altlas-gpus" in page and "Simulated T4 16GB" in page
    cluster = gpu_cluster._repr_html_()
    assert gpu_cluster.scheduler_address in cluster and "/altlas-gpus" in cluster and "GPU 0" not in cluster


def test_batch_keeps_order_and_shows_its_chunks(client: Client) -> None:
    batch = client.submit_batch(range(96), abs, gpu_options={"memory_mb": 64})
    assert batch.result(timeout=120) == list(range(96))
    assert sum(batch.sizes) == 96 and len(batch.sizes) > 1
    page = batch._repr_html_()
    assert f"96 / 96 items done in {len(batch.sizes)} chunks" in page


def double(x: int) -> int:
    return 2 * x


def test_a_batch_on_the_heterogeneous_pool_gives_the_a100s_more(client: Client) -> None:
    """The router reports each GPU's nominal speed: before anything is learned, the split follows it."""
    assert {g["id"]: g["speed_gflops"] for g in client._gpu_rows()} == {0: 2000.0, 1: 2000.0, 2: 500.0, 3: 500.0}
    batch = client.submit_batch(range(96), double, gpu_options={"task_type": "split-test"})
    assert batch.result() == [2 * i for i in range(96)]
    shares: dict[int, int] = {}
    for future, size in zip(batch.futures, batch.sizes, strict=True):
        gpu = client.explain(future)["gpu"]
        shares[gpu] = shares.get(gpu, 0) + size
    assert shares == {0: 38, 1: 38, 2: 10, 3: 10}


def tokenize_and_run(x: int) -> int:
    """One item: 10 GFLOP on the GPU (5 ms on an A100, 20 ms on a T4) after 20 ms of host work (the same
    on every GPU's worker), so the learned speeds differ from the nominal 4:1."""
    time.sleep(0.02)
    run_on_gpu(10.0)
    return x


def test_the_split_follows_the_speeds_the_router_learned(client: Client, gpu_cluster: GpuCluster) -> None:
    """Client.submit_batch asks the router's altlas_speeds for what it learned (per item: each chunk's cost is
    its item count) and splits the next batch by it, over Dask's protocol, on the heterogeneous pool."""
    warm = client.submit_batch(range(96), tokenize_and_run, gpu_options={"task_type": "learned-split"})
    assert warm.result() == list(range(96))
    assert per_gpu(list(zip(warm.gpus, warm.sizes, strict=True))) == {0: 38, 1: 38, 2: 10, 3: 10}  # nominal
    answer = client.sync(client.scheduler.altlas_speeds, task_type="learned-split")
    speeds = {int(g): s for g, s in answer["speeds"].items()}
    assert set(speeds) == {0, 1, 2, 3} and max(speeds.values()) == 1.0
    # an A100 is still the faster. (How far a T4's learned speed sits above its nominal 0.25 depends on how the
    # core divides a chunk's wall time among the chunks sharing its GPU, host work included: not asserted.)
    assert min(speeds[0], speeds[1]) > max(speeds[2], speeds[3])
    batch = client.submit_batch(range(96), tokenize_and_run, gpu_options={"task_type": "learned-split"})
    assert batch.result() == list(range(96))
    shares: dict[int, int] = {}
    for future, size in zip(batch.futures, batch.sizes, strict=True):
        gpu = client.explain(future)["gpu"]
        shares[gpu] = shares.get(gpu, 0) + size
    assert sum(shares.values()) == 96
    total = sum(speeds.values())  # each GPU's share is its learned speed's part of the batch (largest remainder)
    assert all(abs(shares[g] - 96 * speeds[g] / total) < 1 for g in speeds), (shares, speeds)
    assert min(shares[0], shares[1]) >= max(shares[2], shares[3])
    logs = "\n".join(line for _, line in client.get_scheduler_logs(n=1000))
    assert "altlas_speeds" not in logs  # no handler error (KeyError) on the scheduler


@pytest.mark.parametrize("task_type", [5, "", "x" * 129])
def test_speeds_refuses_a_task_type_that_is_no_name(client: Client, task_type: object) -> None:
    answer = client.sync(client.scheduler.altlas_speeds, task_type=task_type)
    assert answer["code"] == 400 and "task_type must be a name of 1 to 128 characters" in answer["error"]
