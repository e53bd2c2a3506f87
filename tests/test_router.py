"""The GPU router on real worker processes: placement, priority, waiting, failover, retries, drain, timeout."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter

import cloudpickle
import dask
import distributed
import pytest
from conftest import outcomes, scraped_metrics, wait_for

from altlas_dask import (
    GpuOptionsError,
    GpuRetriesExhaustedError,
    GpuRoutingError,
    GpuTaskTimeoutError,
    run_on_gpu,
    start_cluster,
)
from altlas_dask.config import build_config
from altlas_dask.scheduling.quotas import QuotaExceededError

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers can't import test modules

MAX_CONCURRENT = 2
ROUTER_CONFIG = {
    "accounting": {"database": ":memory:"},
    "cluster": {"scheduler_address": "127.0.0.1:0", "dashboard_address": "127.0.0.1:0"},
    "gpu": {
        "workload": {"queue_processing_interval": 0.05},
        "multi_gpu": {
            "max_concurrent_tasks_per_gpu": MAX_CONCURRENT,
            "task_specific_mappings": {"text_generation": "gpu_1"},
        },
    },
    "simulation": {
        "gpus": [
            {"name": "Big", "memory_mb": 16000, "speed_gflops": 1000, "count": 2},
            {"name": "Small", "memory_mb": 8000, "speed_gflops": 500, "count": 2, "compute_capability": "7.5"},
        ]
    },
}


def timed_kernel(work_gflop, memory_mb=0, tag=None):
    """run_on_gpu plus wall-clock start/end, so tests can check ordering across workers."""
    start = time.time()
    result = run_on_gpu(work_gflop, memory_mb)
    return {**result, "start": start, "end": time.time(), "tag": tag}


def logged_kernel(index, work_gflop, log_path):
    """Append to a log only when the task completes: a task run twice to completion shows up twice."""
    result = run_on_gpu(work_gflop)
    with open(log_path, "a") as log:
        log.write(f"{index}\n")
    return {**result, "value": index * 2}


def failing_task():
    raise ValueError("bad input inside the task")


@pytest.fixture(scope="module")
def cluster():
    with start_cluster(build_config(ROUTER_CONFIG)) as gpu_cluster:
        yield gpu_cluster


@pytest.fixture
def client(cluster):
    client = cluster.client(gpu_defaults={"user": "admin"})  # drain/enable are admin-only
    wait_for(lambda: len(client.gpus()) == 4)
    yield client
    for gpu in range(4):
        client.enable_gpu(gpu)
    client.run(lambda dask_worker: dask_worker.plugins["altlas-gpu"].device.clear_faults())
    wait_for(lambda: all(g.status == "active" and g.active_requests == 0 for g in client.gpus()))
    client.close()


def placements(client, futures):
    results = client.gather(futures)
    for future, result in zip(futures, results, strict=True):
        assert client.explain(future)["gpu"] == result["gpu"]  # the router's decision is where it ran
    return Counter(r["gpu"] for r in results)


@pytest.mark.parametrize("strategy", ["round_robin", "least_loaded", "random", "hybrid", "memory_optimized"])
def test_a_burst_of_100_tasks_spreads_over_all_four_gpus(client, strategy):
    futures = [client.submit(run_on_gpu, 5, pure=False, gpu_options={"strategy": strategy}) for _ in range(100)]
    counts = placements(client, futures)
    assert sum(counts.values()) == 100
    assert set(counts) == {0, 1, 2, 3}, counts


def test_single_gpu_keeps_a_burst_on_gpu_0(client):
    futures = [client.submit(run_on_gpu, 5, pure=False, gpu_options={"strategy": "single_gpu"}) for _ in range(30)]
    assert placements(client, futures) == Counter({0: 30})


def test_task_specific_prefers_the_mapped_gpu_and_falls_back_when_it_is_full(client):
    opts = {"strategy": "task_specific", "task_type": "text_generation"}
    futures = [client.submit(run_on_gpu, 20, pure=False, gpu_options=opts) for _ in range(40)]
    counts = placements(client, futures)
    assert counts[1] >= MAX_CONCURRENT and len(counts) > 1, counts
    for info in client.explain_many(futures).values():
        if info["gpu"] == 1:
            assert "maps to GPU 1" in info["reason"], info
        else:  # GPU 1 has only 2 slots: the others took the overflow, and say why
            assert "mapped GPU 1 cannot take it; fell back to least_loaded" in info["reason"], info
            assert "max_concurrent_tasks_per_gpu" in info["rejected"]["1"], info


def test_priority_5_starts_before_priority_1_queued_earlier(client):
    blockers = [client.submit(timed_kernel, 600, tag="block", pure=False) for _ in range(4 * MAX_CONCURRENT)]
    wait_for(lambda: sum(g.active_requests for g in client.gpus()) == 4 * MAX_CONCURRENT)
    low = [client.submit(timed_kernel, 5, tag="low", pure=False, gpu_options={"priority": 1}) for _ in range(6)]
    wait_for(lambda: client.router_status()["tracked"].get("queued", 0) >= 6)
    high = [client.submit(timed_kernel, 5, tag="high", pure=False, gpu_options={"priority": 5}) for _ in range(6)]
    client.gather(blockers + low + high)
    placed = {key: info["placed_at"] for key, info in client.explain_many(low + high).items()}
    # the router's order (worker processes then start them within their own scheduling jitter)
    assert max(placed[f.key] for f in high) <= min(placed[f.key] for f in low)


def test_a_task_waits_for_memory_then_runs(client):
    holder = client.submit(timed_kernel, 600, 6000, pure=False, gpu_options={"specific_gpu_id": 2, "memory_mb": 6000})
    wait_for(lambda: client.explain(holder)["status"] == "running")
    waiter = client.submit(timed_kernel, 5, 3000, pure=False, gpu_options={"specific_gpu_id": 2, "memory_mb": 3000})
    info = wait_for(lambda: (e := client.explain(waiter))["status"] == "queued" and e)
    assert "3000 MB" in info["reason"] and "free" in info["reason"]
    first, second = client.gather([holder, waiter])
    assert second["gpu"] == 2
    # the router placed the waiter only once the holder had finished (its own event order)
    assert client.explain(waiter)["placed_at"] >= client.explain(holder)["finished_at"]


def test_killing_a_worker_mid_run_loses_nothing_and_reruns_only_its_work(client, tmp_path):
    log = tmp_path / "completions.log"
    count = 3 * MAX_CONCURRENT  # fewer than the slots of 4 GPUs: none waits, so where each runs is known now
    futures = [
        client.submit(logged_kernel, i, 150, str(log), pure=False, gpu_options={"strategy": "round_robin"})
        for i in range(count)
    ]
    victim = wait_for(lambda: next((g for g in client.gpus() if g.id == 0 and g.active_requests), None))
    pid = client.run(os.getpid, workers=[victim.worker])[victim.worker]
    index = {f.key: i for i, f in enumerate(futures)}
    on_gpu0 = {index[k] for k, info in client.explain_many(futures).items() if info["gpu"] == 0}
    os.kill(pid, signal.SIGKILL)
    results = client.gather(futures)
    assert [r["value"] for r in results] == [2 * i for i in range(count)]
    completions = Counter(int(line) for line in log.read_text().split())
    assert set(completions) == set(range(count)), "every task completed"
    # Only work that was on the dead GPU may run again (a task killed mid-run, or a finished result that
    # lived only in the dead worker's memory); nothing that ran elsewhere runs twice.
    assert {i for i, n in completions.items() if n > 1} <= on_gpu0, completions
    assert max(completions.values()) <= 2
    wait_for(lambda: len(client.gpus()) == 4)  # the nanny restarts GPU 0's worker and it re-registers


def test_drain_stops_new_work_lets_running_work_finish_and_enable_restores(client):
    running = client.submit(timed_kernel, 300, pure=False, gpu_options={"specific_gpu_id": 0})
    wait_for(lambda: client.explain(running)["status"] == "running")
    assert client.drain_gpu(0, reason="maintenance test")["draining"] is True
    assert next(g for g in client.gpus() if g.id == 0).status == "maintenance"
    futures = [client.submit(run_on_gpu, 5, pure=False, gpu_options={"strategy": "round_robin"}) for _ in range(30)]
    assert 0 not in placements(client, futures)
    assert running.result()["gpu"] == 0
    client.enable_gpu(0)
    futures = [client.submit(run_on_gpu, 5, pure=False, gpu_options={"strategy": "round_robin"}) for _ in range(30)]
    assert 0 in placements(client, futures)


def test_draining_an_unknown_gpu_is_a_clear_error(client):
    with pytest.raises(RuntimeError, match="unknown GPU 42"):
        client.drain_gpu(42)


def test_timeout_cancels_a_running_task_and_a_waiting_one(client):
    slow = client.submit(run_on_gpu, 5e6, pure=False, gpu_options={"specific_gpu_id": 3, "timeout": 0.5})
    with pytest.raises(GpuTaskTimeoutError, match="timeout of 0.5s \\(running on GPU 3\\)"):
        slow.result(timeout=30)
    worker = next(g.worker for g in client.gpus() if g.id == 3)

    def device_busy():
        return client.run(lambda dask_worker: dask_worker.plugins["altlas-gpu"].device.state().active_requests,
                          workers=[worker])[worker]

    wait_for(lambda: device_busy() == 0, what="the stopped kernel to free GPU 3")  # it would run for hours
    assert client.explain(slow)["status"] == "timed_out"
    client.drain_gpu(3)
    stuck = client.submit(run_on_gpu, 1, pure=False, gpu_options={"specific_gpu_id": 3, "timeout": 0.3})
    with pytest.raises(GpuTaskTimeoutError, match="still waiting for a GPU"):
        stuck.result(timeout=30)


def inject(client, gpu, kind, **kwargs):
    worker = next(g.worker for g in client.gpus() if g.id == gpu)
    client.run(lambda dask_worker: dask_worker.plugins["altlas-gpu"].device.inject(kind, **kwargs), workers=[worker])


def test_a_gpu_error_is_retried_on_a_different_gpu(client):
    inject(client, 0, "error_rate", error_rate=1.0)
    future = client.submit(run_on_gpu, 5, pure=False, gpu_options={"strategy": "single_gpu"})
    assert future.result()["gpu"] == 1
    info = client.explain(future)
    assert [a["gpu"] for a in info["attempts"]] == [0]
    assert "ECC" in info["attempts"][0]["error"]


def test_out_of_memory_is_retried_on_a_gpu_with_room(client):
    # The router is told nothing about memory, best-fit picks a small GPU, which runs out.
    future = client.submit(run_on_gpu, 5, 12000, pure=False, gpu_options={"strategy": "memory_optimized"})
    assert future.result()["gpu"] in (0, 1)
    attempts = client.explain(future)["attempts"]
    assert [a["gpu"] for a in attempts] == [2, 3]
    assert all("CUDA out of memory" in a["error"] for a in attempts)


def test_retries_exhausted_gives_one_clear_error(client):
    for gpu in range(4):
        inject(client, gpu, "error_rate", error_rate=1.0)
    future = client.submit(run_on_gpu, 5, pure=False, gpu_options={"retries": 2})
    with pytest.raises(GpuRetriesExhaustedError, match="failed on 3 GPU attempt"):
        future.result()


def test_user_errors_are_not_retried(client):
    future = client.submit(failing_task, pure=False, gpu_options={})
    with pytest.raises(ValueError, match="bad input inside the task"):
        future.result()
    assert len(client.explain(future)["attempts"]) == 1


def test_a_lost_gpu_hands_its_work_to_the_others(client):
    futures = [client.submit(timed_kernel, 100, pure=False, gpu_options={"strategy": "round_robin"}) for _ in range(16)]
    wait_for(lambda: next(g for g in client.gpus() if g.id == 2).active_requests > 0)
    inject(client, 2, "lost")
    results = client.gather(futures)
    assert len(results) == 16
    wait_for(lambda: next(g for g in client.gpus() if g.id == 2).status == "error")
    after = [client.submit(run_on_gpu, 5, pure=False, gpu_options={"strategy": "round_robin"}) for _ in range(12)]
    assert 2 not in placements(client, after)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"strategy": "no such"}, "gpu_options.strategy: not a strategy name"),
        ({"priority": 9}, "gpu_options.priority"),
        ({"memory_mb": -5}, "gpu_options.memory_mb"),
        ({"specific_gpu_id": "gpu_0;drop"}, "gpu_options.specific_gpu_id"),
    ],
)
def test_bad_gpu_options_fail_before_anything_is_sent(client, options, message):
    before = client.router_status()["counters"]["placed"]
    with pytest.raises(GpuOptionsError, match=message):
        client.submit(run_on_gpu, 1, gpu_options=options)
    assert client.router_status()["counters"]["placed"] == before


def test_bad_annotations_from_plain_dask_fail_the_future_clearly(client):
    with dask.annotate(gpu_options={"priority": 9}):
        future = distributed.Client.submit(client, run_on_gpu, 1, pure=False)
    with pytest.raises(GpuOptionsError, match="gpu_options.priority"):
        future.result(timeout=30)


def test_a_strategy_the_cluster_does_not_enable_fails_clearly(client):
    with dask.annotate(gpu_options={"strategy": "nope"}):  # plain Dask: the router's own check, on the future
        future = distributed.Client.submit(client, run_on_gpu, 1, pure=False)
    with pytest.raises(GpuRoutingError, match="strategy 'nope' is not enabled in this cluster's config"):
        future.result(timeout=30)


def test_invented_strategy_names_add_no_metric_series(client, cluster):
    """50 made-up strategy names through plain Dask (the altlas client refuses them): counted as `other`."""
    invented = [f"made_up_{i}" for i in range(50)]
    futures = []
    for name in invented:
        with dask.annotate(gpu_options={"strategy": name}):
            futures.append(distributed.Client.submit(client, run_on_gpu, 1, pure=False))
    distributed.wait(futures, timeout=60)
    series = scraped_metrics(cluster, 'strategy="other"')
    assert not [line for line in series if "made_up_" in line], series
    assert any(line.startswith("altlas_routing_decisions_total{") and 'strategy="other"' in line for line in series)


def test_a_misspelt_strategy_fails_where_it_is_typed_with_the_closest_name(client):
    before = client.router_status()["counters"]["placed"]
    with pytest.raises(GpuOptionsError, match=r"'least_loded' is not enabled .*did you mean 'least_loaded'\?"):
        client.submit(run_on_gpu, 1, gpu_options={"strategy": "least_loded"})
    with pytest.raises(GpuOptionsError, match="'least_loded' is not enabled"), dask.annotate(
        gpu_options={"strategy": "least_loded"}
    ):
        client.compute(dask.delayed(run_on_gpu)(1))
    assert client.router_status()["counters"]["placed"] == before


def test_dask_annotate_around_the_altlas_client_is_honoured_and_checked(client):
    with dask.annotate(gpu_options={"specific_gpu_id": 3, "task_type": "annotated"}):
        pinned = client.submit(run_on_gpu, 1, pure=False)
        mixed = client.submit(run_on_gpu, 1, pure=False, gpu_options={"specific_gpu_id": 2})  # the call's own wins
    assert pinned.result(timeout=30)["gpu"] == 3 and mixed.result(timeout=30)["gpu"] == 2
    assert client.explain(pinned)["gpu"] == 3
    with pytest.raises(GpuOptionsError, match="gpu_options.priority"), dask.annotate(gpu_options={"priority": 9}):
        client.submit(run_on_gpu, 1, pure=False)


def test_compute_and_persist_take_gpu_options(client):
    computed = client.compute(dask.delayed(run_on_gpu)(1), gpu_options={"specific_gpu_id": 2})
    assert computed.result(timeout=30)["gpu"] == 2
    persisted = client.persist(dask.delayed(run_on_gpu)(1), gpu_options={"specific_gpu_id": 1})
    assert client.compute(persisted).result(timeout=30)["gpu"] == 1
    with pytest.raises(GpuOptionsError, match="gpu_options.priority"):
        client.compute(dask.delayed(run_on_gpu)(1), gpu_options={"priority": 9})


def test_unknown_gpu_and_impossible_memory_fail_clearly(client):
    unknown = client.submit(run_on_gpu, 1, pure=False, gpu_options={"specific_gpu_id": 7})
    with pytest.raises(GpuRoutingError, match=r"unknown GPU 7; this cluster has GPUs 0 \(Big, GPU-.*\), 1 .*, 3 \(Sm"):
        unknown.result(timeout=30)
    huge = client.submit(run_on_gpu, 1, pure=False, gpu_options={"memory_mb": 100_000})
    with pytest.raises(GpuRoutingError, match="no GPU can ever take this task"):
        huge.result(timeout=30)


def test_plain_dask_annotate_and_gpu_resource_are_routed(client):
    with dask.annotate(gpu_options={"strategy": "single_gpu"}):
        annotated = distributed.Client.submit(client, run_on_gpu, 1, pure=False)
    assert annotated.result()["gpu"] == 0
    assert client.explain(annotated)["strategy"] == "single_gpu"
    plain = distributed.Client.submit(client, run_on_gpu, 1, resources={"GPU": 1}, pure=False)
    assert plain.result()["gpu"] == client.explain(plain)["gpu"]


def test_submit_batch_splits_across_gpus_and_keeps_order(client):
    batch = client.submit_batch(range(200), abs, min_batch_size_per_gpu=4)
    assert batch.result() == list(range(200))
    assert len(batch.futures) > 4 and all(size >= 4 for size in batch.sizes)
    explained = client.explain_many(batch.futures)
    assert set(explained) == {f.key for f in batch.futures}
    assert len({info["gpu"] for info in explained.values()}) > 1
    whole = client.submit_batch(range(10), abs, batch_split=False)
    assert len(whole.futures) == 1 and whole.result() == list(range(10))


def test_the_router_helpers_work_on_an_asynchronous_client(cluster):
    import asyncio

    from altlas_dask import Client, RouterError

    async def main():
        async with Client(cluster.scheduler_address, asynchronous=True, gpu_defaults={"user": "bob"}) as aclient:
            assert [g.id for g in await aclient.gpus()] == [0, 1, 2, 3]
            assert (await aclient.quota())["user_id"] == "bob"
            with pytest.raises(RouterError, match="'bob' is not an admin .*: may not drain GPU 42"):
                await aclient.drain_gpu(42)
            with pytest.raises(RuntimeError, match="explain_many"):
                aclient.explain("some-key")

    asyncio.run(main())


def test_a_task_waiting_for_its_dependencies_still_times_out(client):
    """Issue 10: a deadline was dropped while the task waited on dependencies; now it fires where the task is."""
    upstream = client.submit(run_on_gpu, 5e6, pure=False, gpu_options={"specific_gpu_id": 0})  # runs for hours
    downstream = client.submit(
        lambda x: x, upstream, pure=False, gpu_options={"timeout": 0.5, "specific_gpu_id": 1}
    )
    with pytest.raises(GpuTaskTimeoutError, match="timeout of 0.5s \\(waiting for its dependencies\\)"):
        downstream.result(timeout=60)
    assert client.explain(downstream)["status"] == "timed_out"
    client.cancel_task(upstream)


def test_a_stopped_gpu_worker_is_unresponsive_its_work_moves_and_it_comes_back(tmp_path):
    """Issue 10: a GPU worker frozen (SIGSTOP) kept its tasks hostage while every surface said 'active'."""
    config = {**ROUTER_CONFIG, "gpu": {**ROUTER_CONFIG["gpu"], "detection": {"health_check_interval": 2}}}
    config["simulation"] = {"gpus": [{"name": "Big", "memory_mb": 16000, "speed_gflops": 1000, "count": 2}]}
    log = tmp_path / "completions.log"
    with start_cluster(build_config(config)) as gpu_cluster, gpu_cluster.client() as client:
        wait_for(lambda: len(client.gpus()) == 2)
        futures = [
            client.submit(logged_kernel, i, 2000, str(log), pure=False, gpu_options={"strategy": "round_robin"})
            for i in range(4)
        ]
        frozen = wait_for(lambda: next((g for g in client.gpus() if g.id == 0 and g.active_requests), None))
        pid = client.run(os.getpid, workers=[frozen.worker])[frozen.worker]
        os.kill(pid, signal.SIGSTOP)
        try:
            gpu0 = wait_for(lambda: next((g for g in client.gpus() if g.id == 0 and g.status == "unresponsive"), None))
            assert "no report for" in gpu0.health_reason
            results = client.gather(futures[1::2])  # GPU 1's own tasks, and then GPU 0's, placed again on GPU 1
            moved = client.gather(futures[0::2])
            assert {r["gpu"] for r in moved} == {1} and all(r["gpu"] == 1 for r in results)
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: next(g for g in client.gpus() if g.id == 0).status == "active", what="GPU 0 re-admitted")
        assert [r["value"] for r in client.gather(futures)] == [0, 2, 4, 6]
        infos = client.explain_many(futures)
        assert all(i["status"] == "completed" for i in infos.values()), infos


def test_tasks_refused_by_a_quota_in_a_graph_with_placed_ones_err_and_never_run(cluster, client):
    """One graph: the first task is admitted and placed, the others are over ``requests_per_day``. Dask moves the
    placed one to processing before it has moved the refused ones to no-worker; failing those then (the router
    did, on that processing transition) left Dask to bring them back, untracked, and they ran uncharged."""
    client.set_quota("rationed", requests_per_day=1)
    rationed = cluster.client(gpu_defaults={"user": "rationed"})
    try:
        futures = rationed.map(run_on_gpu, [1.0, 1.0, 1.0], pure=False)
        # which one is admitted is the graph's order
        assert sorted(outcomes(futures, QuotaExceededError)) == ["ok", "refused", "refused"]
        assert client.quota("rationed")["rate_limits"]["requests_per_day"]["used"] == 1
    finally:
        rationed.close()
