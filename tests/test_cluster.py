"""Real Dask clusters (LocalCluster worker processes), each worker bound to a virtual GPU.

Most tests share the session's 4-GPU cluster (``gpu_cluster``/``dask_client`` in conftest.py) and leave
it as they found it. Fault injection damages GPUs, so it runs on its own small cluster.
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterator

import pytest
from conftest import local_config, wait_for
from distributed import Client, Event

from altlas_dask.client.live import gpu_workers, live_gpus
from altlas_dask.gpus import GpuFaultError, GpuOutOfMemoryError
from altlas_dask.gpus.simulated import simulated_uuid
from altlas_dask.ops.launcher import GpuCluster, start_cluster
from altlas_dask.resources import GPU_MEMORY_RESOURCE, GPU_RESOURCE
from altlas_dask.worker.binding import METRIC_NAME, PLUGIN_NAME
from altlas_dask.worker.kernels import run_on_gpu, torch_matmul

POOL = [  # cluster.yaml's simulation.gpus, GPU by GPU
    {"name": "Simulated A100 80GB", "memory_mb": 81920, "cc": "8.0", "speed": 2000.0},
    {"name": "Simulated A100 80GB", "memory_mb": 81920, "cc": "8.0", "speed": 2000.0},
    {"name": "Simulated T4 16GB", "memory_mb": 16384, "cc": "7.5", "speed": 500.0},
    {"name": "Simulated T4 16GB", "memory_mb": 16384, "cc": "7.5", "speed": 500.0},
]


def live_state(client, gpu: int):
    return next((s for s in live_gpus(client) if s.id == gpu), None)


def on(client, gpu: int) -> dict:
    """Submit options pinning a task to the worker that owns ``gpu``."""
    worker = wait_for(lambda: gpu_workers(client).get(gpu), what=f"GPU {gpu}'s worker in the heartbeats")
    return {"workers": [worker], "allow_other_workers": False, "pure": False}


# -- the shared 4-GPU cluster ------------------------------------------------------------------


def test_scheduler_sees_one_worker_per_gpu_advertising_gpu_resources(gpu_cluster, dask_client):
    assert gpu_cluster.simulated is True
    assert [g.id for g in gpu_cluster.gpus] == [0, 1, 2, 3]
    workers = dask_client.scheduler_info(n_workers=-1)["workers"]
    assert len(workers) == 4
    by_name = {w["name"]: w for w in workers.values()}
    assert sorted(by_name) == ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]
    for k, expected in enumerate(POOL):
        worker = by_name[f"gpu-{k}"]
        assert worker["resources"] == {GPU_RESOURCE: 1, GPU_MEMORY_RESOURCE: expected["memory_mb"]}
        assert worker["nthreads"] == gpu_cluster.config.routing().max_concurrent_tasks_per_gpu


def test_each_workers_spec_carries_its_gpu_plugin_and_resources(gpu_cluster):
    """The binding is part of the cluster's own worker spec (as dask-cuda composes it), not patched in later."""
    specs = gpu_cluster.cluster.worker_spec
    assert sorted(specs) == ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]
    for k, expected in enumerate(POOL):
        options = specs[f"gpu-{k}"]["options"]
        (plugin,) = options["plugins"]
        assert (plugin.name, plugin.simulated_index, plugin.simulate_count) == (PLUGIN_NAME, k, 4)
        assert options["resources"] == {GPU_RESOURCE: 1, GPU_MEMORY_RESOURCE: expected["memory_mb"]}
    with pytest.raises(ValueError, match="cannot scale beyond the 4 GPUs"):
        gpu_cluster.cluster.new_worker_spec()


def test_heartbeat_metric_describes_each_workers_gpu(dask_client):
    workers = dask_client.scheduler_info(n_workers=-1)["workers"]
    for address, worker in workers.items():
        metric = worker["metrics"][METRIC_NAME]
        k = int(worker["name"].removeprefix("gpu-"))
        assert metric["id"] == k
        assert metric["worker"] == address
        assert metric["name"] == POOL[k]["name"]
    states = live_gpus(dask_client)
    assert [s.id for s in states] == [0, 1, 2, 3]
    for state, expected in zip(states, POOL, strict=True):
        assert state.name == expected["name"]
        assert state.memory_total_mb == expected["memory_mb"]
        assert state.compute_capability == expected["cc"]
        assert state.uuid == simulated_uuid(state.id)
        assert state.status == "active"
        assert state.simulated is True
        assert state.worker in workers
    assert gpu_workers(dask_client) == {s.id: s.worker for s in states}
    assert len(set(gpu_workers(dask_client).values())) == 4


@pytest.mark.parametrize("gpu", [0, 1, 2, 3])
def test_task_pinned_to_a_gpu_worker_runs_on_that_gpu(dask_client, gpu):
    result = dask_client.submit(run_on_gpu, 1.0, 10, **on(dask_client, gpu)).result(timeout=60)
    assert result["gpu"] == gpu
    assert result["uuid"] == simulated_uuid(gpu)
    assert result["device_seconds"] == pytest.approx(1.0 / POOL[gpu]["speed"])


def test_tasks_sharing_a_gpu_are_charged_its_device_time_not_their_wall_times(gpu_cluster):
    """Issue 22's over-charge: 8 kernels at once on one GPU run in turn (8 x 0.1 s of device time); each task's
    wall time includes its wait, 0.1 + 0.2 + ... + 0.8 = 3.6 s in all. Charged: each its measured 0.1 s."""
    from distributed import get_task_stream

    from altlas_dask.client.gpu_client import Client as AltlasClient

    gflop = 0.1 * POOL[0]["speed"]
    with AltlasClient(gpu_cluster.scheduler_address, set_as_default=False, timeout=30) as client:
        with get_task_stream(client=client) as stream:
            futures = client.map(run_on_gpu, [gflop] * 8, pure=False, gpu_options={"specific_gpu_id": 0})
            results = client.gather(futures)
        computes = [s for r in stream.data for s in r["startstops"] if s["action"] == "compute"]
        span = max(s["stop"] for s in computes) - min(s["start"] for s in computes)
        walls = sum(s["stop"] - s["start"] for s in computes)
        charged = [client.explain(f)["gpu_seconds"] for f in futures]
    assert {r["gpu"] for r in results} == {0}
    assert walls > 2 * span  # they did share the GPU: each waited for the others' kernels
    assert all(c >= r["device_seconds"] for c, r in zip(charged, results, strict=True)), (charged, results)
    assert sum(charged) <= span + 1e-3, (charged, span)  # at most the device's time (1 ms: clock resolution)


def test_gpu_memory_resource_routes_big_tasks_to_big_gpus(dask_client):
    big = 40_000  # fits an A100 80GB, not a T4 16GB
    futures = [
        dask_client.submit(run_on_gpu, 0.1, big, resources={GPU_MEMORY_RESOURCE: big}, pure=False) for _ in range(4)
    ]
    assert {f.result(timeout=60)["gpu"] for f in futures} <= {0, 1}


def test_out_of_memory_reaches_the_client_and_memory_is_released(dask_client):
    gpu, total = 2, POOL[2]["memory_mb"]
    with pytest.raises(GpuOutOfMemoryError) as info:
        dask_client.submit(run_on_gpu, 0.1, total + 1, **on(dask_client, gpu)).result(timeout=60)
    assert (info.value.gpu, info.value.requested_mb, info.value.total_mb) == (gpu, total + 1, total)
    assert "CUDA out of memory" in str(info.value)
    # a task taking all of the memory fits: nothing leaked from the failed one
    assert dask_client.submit(run_on_gpu, 0.1, total, **on(dask_client, gpu)).result(timeout=60)["gpu"] == gpu
    with pytest.raises(GpuOutOfMemoryError):
        dask_client.submit(run_on_gpu, 0.1, total + 1, **on(dask_client, gpu)).result(timeout=60)
    assert dask_client.submit(run_on_gpu, 0.1, total, **on(dask_client, gpu)).result(timeout=60)["gpu"] == gpu


def test_heartbeat_shows_memory_held_by_a_running_task(dask_client):
    gpu, held_mb = 1, 1234
    release = Event("release-gpu-1-memory", client=dask_client)
    release.clear()

    def hold_memory(memory_mb: int) -> int:
        from distributed import Event

        from altlas_dask.worker.binding import current_device

        device = current_device()
        with device.reserve(memory_mb):
            Event("release-gpu-1-memory").wait(timeout=60)
        return device.index

    future = dask_client.submit(hold_memory, held_mb, **on(dask_client, gpu))
    try:
        busy = wait_for(
            lambda: (s := live_state(dask_client, gpu)) and s.memory_used_mb == held_mb and s,
            what="the heartbeat to show the held memory",
        )
        assert busy.active_requests == 1
        assert busy.utilization_memory == pytest.approx(100 * held_mb / POOL[gpu]["memory_mb"], abs=0.1)
        assert live_state(dask_client, 0).memory_used_mb == 0  # only GPU 1 is holding memory
    finally:
        release.set()
    assert future.result(timeout=60) == gpu
    wait_for(lambda: live_state(dask_client, gpu).memory_used_mb == 0, what="the memory to be released")


def test_torch_matmul_runs_on_the_workers_device(dask_client):
    import torch

    gpu, size, repeats, seed = 3, 64, 3, 1  # one worker only: importing torch costs seconds per process
    result = dask_client.submit(torch_matmul, size, repeats, seed, **on(dask_client, gpu)).result(timeout=120)
    assert result["gpu"] == gpu
    assert result["uuid"] == simulated_uuid(gpu)
    assert result["device"] == "cpu"  # the virtual GPU's torch device
    # the same computation, locally
    a = torch.randn(size, size, generator=torch.Generator().manual_seed(seed))
    expected = a
    for _ in range(repeats):
        expected = torch.tanh(expected @ a / size**0.5)
    assert math.isfinite(result["checksum"])
    assert result["checksum"] == pytest.approx(float(expected.sum()), rel=1e-4, abs=1e-4)
    # the device's memory and busy accounting were released
    wait_for(lambda: live_state(dask_client, gpu).memory_used_mb == 0, what="torch_matmul's memory to be released")


def test_dashboard_answers(gpu_cluster):
    link = gpu_cluster.dashboard_link
    assert link.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(link, timeout=30) as response:
        assert response.status == 200
        assert b"Dask" in response.read()


def test_kernels_refuse_to_run_outside_a_worker():
    with pytest.raises(RuntimeError, match="not running inside a Dask worker"):
        run_on_gpu(1.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        run_on_gpu(-1.0)


# -- a small cluster of its own: compute-capability filter and fault injection -------------------


@pytest.fixture(scope="module")
def small_cluster() -> Iterator[GpuCluster]:
    """A T4 and two A100s with min_compute_capability 8.0: two workers, for GPUs 1 and 2."""
    config = local_config(
        {
            "gpu": {"detection": {"min_compute_capability": 8.0}},
            "simulation": {
                "gpus": [
                    {"name": "Simulated T4 16GB", "memory_mb": 16384, "compute_capability": "7.5", "count": 1},
                    {"name": "Simulated A100 40GB", "memory_mb": 40960, "compute_capability": "8.0", "count": 2},
                ]
            },
        },
        simulate=3,
    )
    cluster = start_cluster(config, timeout=60)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def small_client(small_cluster) -> Iterator[Client]:
    with Client(small_cluster.scheduler_address, timeout=30) as client:
        wait_for(lambda: len(live_gpus(client)) == 2, what="2 GPU heartbeats")
        yield client


def test_cluster_starts_workers_only_for_gpus_meeting_the_compute_capability(small_cluster, small_client):
    assert [g.id for g in small_cluster.gpus] == [1, 2]
    states = live_gpus(small_client)
    assert [(s.id, s.name, s.compute_capability, s.memory_total_mb) for s in states] == [
        (1, "Simulated A100 40GB", "8.0", 40960),
        (2, "Simulated A100 40GB", "8.0", 40960),
    ]
    for gpu in (1, 2):
        assert small_client.submit(run_on_gpu, 1.0, 10, **on(small_client, gpu)).result(timeout=60)["gpu"] == gpu


def inject(client, gpu: int, kind: str, **kwargs) -> None:
    def _inject(dask_worker) -> None:
        dask_worker.plugins[PLUGIN_NAME].device.inject(kind, **kwargs)

    client.run(_inject, workers=[gpu_workers(client)[gpu]])


def test_lost_gpu_shows_as_error_in_the_scheduler_heartbeat(small_client):
    address = gpu_workers(small_client)[2]
    inject(small_client, 2, "lost")
    lost = wait_for(
        lambda: (s := live_state(small_client, 2)) and s.status == "error" and s,
        what="GPU 2 to be reported as lost",
    )
    assert lost.health_status == "critical"
    assert lost.worker == address
    with pytest.raises(GpuFaultError, match="lost"):
        small_client.submit(run_on_gpu, 1.0, 10, **on(small_client, 2)).result(timeout=60)
    healthy = live_state(small_client, 1)
    assert (healthy.status, healthy.health_status) == ("active", "healthy")


def test_error_rate_fault_fails_tasks_and_turns_health_critical(small_client):
    inject(small_client, 1, "error_rate", error_rate=1.0)
    with pytest.raises(GpuFaultError, match="ECC"):
        small_client.submit(run_on_gpu, 1.0, 10, **on(small_client, 1)).result(timeout=60)
    state = wait_for(
        lambda: (s := live_state(small_client, 1)) and s.health_status == "critical" and s,
        what="GPU 1 to turn critical",
    )
    assert state.status == "active"
    assert state.error_rate > 0


def test_restarted_workers_report_the_same_gpu_uuid_and_id(small_cluster, small_client):
    """After the fault tests damaged GPUs 1 and 2, restart both workers: each comes back as the same GPU."""
    from altlas_dask.client.gpu_client import Client as AltlasClient

    before = {s.id: s for s in live_gpus(small_client)}
    old = gpu_workers(small_client)
    admin = AltlasClient(small_cluster.scheduler_address, gpu_defaults={"user": "admin"}, timeout=30)
    admin.drain_gpu(1, reason="firmware update")
    small_client.restart_workers([old[1], old[2]], timeout=60)
    after = wait_for(
        lambda: (
            (states := {s.id: s for s in live_gpus(small_client)})
            and all(states.get(k) and states[k].status == "active" and states[k].error_rate == 0 for k in (1, 2))
            and states
        ),
        what="both restarted workers to report a healthy GPU",
    )
    assert sorted(after) == [1, 2]
    for k in (1, 2):
        assert after[k].uuid == before[k].uuid == simulated_uuid(k)
        assert after[k].name == "Simulated A100 40GB"  # GPU 2 read "unreachable: GPU is lost" before
    assert sorted(small_cluster.cluster.worker_spec) == ["gpu-1", "gpu-2"]
    assert small_client.submit(run_on_gpu, 1.0, 10, **on(small_client, 2)).result(timeout=60)["gpu"] == 2
    # the router: same ids, and GPU 1 still in maintenance; work pinned to it waits, then runs once enabled
    routed = wait_for(
        lambda: (r := {g.id: g for g in admin.gpus() if g.worker not in (old[1], old[2])}) and {1, 2} <= set(r) and r,
        what="the router to have both GPUs on their new workers",
    )
    assert routed[1].status == "maintenance" and routed[1].drain_reason == "firmware update"
    pinned = admin.submit(run_on_gpu, 1.0, 10, gpu_options={"specific_gpu_id": 1}, pure=False)
    wait_for(lambda: admin.explain(pinned)["status"] == "queued", what="the pinned task to wait for GPU 1")
    admin.enable_gpu(1)
    assert pinned.result(timeout=60)["gpu"] == 1
    admin.close()


def test_a_killed_worker_comes_back_as_the_same_gpu_and_runs_the_task_pinned_to_it(small_cluster, small_client):
    """Forced: the worker process dies (no goodbye); its Nanny restarts it from the same spec, so the GPU
    comes back with the same id and uuid, and a task pinned to that GPU while it was gone runs there."""
    import os

    from altlas_dask.client.gpu_client import Client as AltlasClient

    async def die() -> None:
        os._exit(1)

    old = gpu_workers(small_client)[1]
    with AltlasClient(small_cluster.scheduler_address, gpu_defaults={"user": "admin"}, timeout=30) as admin:
        admin.drain_gpu(1, reason="killed on purpose")
        small_client.run(die, workers=[old], wait=False)
        pinned = admin.submit(run_on_gpu, 1.0, 10, gpu_options={"specific_gpu_id": 1}, pure=False)  # waits
        back = wait_for(
            lambda: (s := live_state(small_client, 1)) and s.worker != old and s.status == "active" and s,
            timeout=60,
            what="GPU 1 to come back on a new worker process",
        )
        assert (back.id, back.uuid) == (1, simulated_uuid(1))
        # the router keeps GPU 1 (even when the new worker registers before the old one is removed),
        # with its maintenance state: the pinned task waits until it is enabled
        wait_for(
            lambda: (g := next((x for x in admin.gpus() if x.id == 1 and x.worker != old), None))
            and g.status == "maintenance"
            and g.drain_reason == "killed on purpose",
            timeout=60,
            what="the router to see GPU 1 on its new worker, still in maintenance",
        )
        assert admin.explain(pinned)["status"] == "queued"
        admin.enable_gpu(1)
        assert pinned.result(timeout=60)["gpu"] == 1
