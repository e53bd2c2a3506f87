"""Scale through the adapter: the router's CPU per task inside a real Dask scheduler with 4 and 256 GPU workers.

The scheduler runs the real ``GpuRouter`` plugin; the GPU workers are light stand-ins: real
``distributed.Worker``s (one thread each, in this process) whose heartbeat carries a fixed GPU state (the
metric a GPU worker's plugin reports) and that advertise the GPU resources, so the router sees a pool of N GPUs
and places real tasks on them. ``--tasks`` no-op GPU tasks go in as one ``map`` (they queue on the scheduler:
the backlog peaks near the task count), then run to the end. Measured per task: the scheduler thread's CPU
inside the router's hooks (``update_graph``, ``transition``, the tick), with bench/hookcost.py's ``Meter``
(``time.thread_time_ns``), so the workers sharing the process do not count. Also: CPU of one adapter poll
(the reports of the workers heard since the last poll to the core + a tick) with nothing to place, at each
pool size, with no heartbeat since the last poll and with one from every worker.

Run: ``PYTHONPATH=. .venv/bin/python bench/scale_adapter.py [--gpus 4,256] [--tasks 3000] [--reps 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from common import bench_config, command, load_average, machine, machine_line, quiet, table
from distributed import WorkerPlugin
from hookcost import HOOK_NAMES, HOOKS, instrument
from overhead import GPU_OPTIONS, noop

from altlas_dask.gpus.state import GpuState
from altlas_dask.resources import gpu_resources
from altlas_dask.worker.binding import METRIC_NAME

POLLS = 200


class StandInGpu(WorkerPlugin):
    """A worker plugin that makes a plain worker look like GPU ``index`` to the router (heartbeat metric)."""

    name = "altlas-gpu-stand-in"

    def __init__(self, index: int) -> None:
        self.state = GpuState(index, f"GPU-stand-in-{index}", "Stand-in A100 80GB", "8.0", "active", 81920, 0,
                              0.0, 0.0, 40.0, 60.0, 400.0, simulated=True)  # fmt: skip

    def setup(self, worker) -> None:
        worker.metrics[METRIC_NAME] = lambda w: self.state.with_(worker=w.address).to_dict()


def start(n_gpus: int):
    import dask
    from distributed import Scheduler, SpecCluster, Worker

    from altlas_dask.client.gpu_client import Client
    from scheduler_plugins.gpu_router import GpuRouter

    config = bench_config("gpu.multi_gpu.max_concurrent_tasks_per_gpu=1")
    router = GpuRouter(config)
    workers = {
        f"gpu-{i}": {"cls": Worker, "options": {"nthreads": 1, "resources": gpu_resources(81920), "host": "127.0.0.1",
                                                "plugins": {StandInGpu(i)}}}
        for i in range(n_gpus)
    }  # fmt: skip
    scheduler = {"cls": Scheduler, "options": {"plugins": [router], "dashboard_address": ":0", "host": "127.0.0.1"}}
    with dask.config.set({"distributed.comm.timeouts.connect": "600s"}):  # 256 workers start on a loaded loop
        cluster = SpecCluster(workers=workers, scheduler=scheduler)
    client = Client(cluster, coalesce_ms=None, timeout=600)
    deadline = time.monotonic() + 600
    while len(router.view.known_gpus()) < n_gpus and time.monotonic() < deadline:
        time.sleep(0.1)
    if len(router.view.known_gpus()) < n_gpus:
        raise RuntimeError(f"the router saw {len(router.view.known_gpus())} of {n_gpus} GPUs")
    return cluster, client, router


def poll_cost(client) -> tuple[float, float]:
    """CPU microseconds of one adapter poll (the reports of the workers heard since the last poll, then a tick),
    on the loop: with no heartbeat since the last poll, and with one from every worker (the work of every poll
    before the router was told of each heartbeat; the reports are the same objects, so the core gets none).
    The two alternate, POLLS times each."""

    def measure(dask_scheduler) -> tuple[float, float]:
        plugin = dask_scheduler.plugins["altlas-router"]
        none = every = 0
        for _ in range(POLLS):
            t0 = time.thread_time_ns()
            plugin._poll()
            t1 = time.thread_time_ns()
            plugin._heard.update(dask_scheduler.workers)
            t2 = time.thread_time_ns()
            plugin._poll()
            none, every = none + t1 - t0, every + time.thread_time_ns() - t2
        return none / POLLS / 1e3, every / POLLS / 1e3

    return client.run_on_scheduler(measure)


def run(n_gpus: int, tasks: int, reps: int) -> dict[str, Any]:
    import distributed

    cluster, client, router = start(n_gpus)
    try:
        meter = instrument(router, detail=False)
        distributed.wait(client.map(noop, range(200), pure=False, gpu_options=GPU_OPTIONS))  # warm-up
        per_task = []
        for rep in range(reps):
            meter.reset()
            futures = client.map(noop, [(rep, i) for i in range(tasks)], pure=False, gpu_options=GPU_OPTIONS)
            distributed.wait(futures)
            del futures
            per_task.append(sum(meter.ns[HOOK_NAMES.get(h, h)] for h in HOOKS) / tasks / 1e3)
        return {"gpus": n_gpus, "tasks": tasks, "router_us_per_task": per_task, "poll_us": poll_cost(client)}
    finally:
        client.close()
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", default="4,256")
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    quiet()
    info, load_start = machine(), load_average()
    rows = []
    for n in (int(x) for x in args.gpus.split(",")):
        r = run(n, args.tasks, args.reps)
        values = r["router_us_per_task"]
        rows.append([f"{n:,}", f"{args.tasks:,}", f"{statistics.median(values):.0f}",
                     f"{min(values):.0f}-{max(values):.0f}", *(f"{us:.1f}" for us in r["poll_us"])])  # fmt: skip
        print(rows[-1], flush=True)
    print(f"\nCommand: `{command('scale_adapter.py')}`; {machine_line(info)}; load {load_start} -> {load_average()}\n")
    print(table(["GPU workers", "tasks per rep", "router CPU us/task (median)", "range",
                 "one poll, none heard, CPU us", "one poll, every worker heard, CPU us"], rows))  # fmt: skip


if __name__ == "__main__":
    main()
