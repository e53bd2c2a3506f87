"""One coalescer, not two (issue 25): the REST gateway's submissions as it sends them now, through the client's
coalescer alone (``altlas_dask.client.coalesce``: the ``submit`` calls of one event-loop turn become one graph
update), against what its own coalescer did before on top (the requests of one turn as one ``Client.map``).

An asynchronous ``altlas_dask.Client`` (as the gateway runs one) on a simulated router cluster; ``--tasks`` no-op
tasks arrive ``--burst`` per event-loop turn (as requests do at a loaded gateway); modes alternate, repetitions
``--reps``. Figures: tasks/s from the first submission to the last result, CPU of the gateway's thread (its
submissions and the scheduler's reports) and of the scheduler's event loop, per task; graph updates sent.

Run: ``.venv/bin/python bench/gateway_coalescing.py [--tasks 2000] [--burst 20] [--reps 3] [--no-write]``.
Writes the ``gateway-coalescing`` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time

from common import (
    bench_config,
    command,
    load_average,
    machine,
    machine_line,
    quiet,
    scheduler_cpu_clock,
    table,
    write_section,
)
from overhead import GPU_OPTIONS, noop

N_GPUS = 2


def call(fn, kwargs):  # what the gateway's own coalescer mapped (altlas_dask/api/calls.py, deleted)
    return fn(**kwargs)


async def run_mode(client, mode: str, n_tasks: int, burst: int, scheduler_cpu) -> tuple[float, float, float, int]:
    """(tasks/s, gateway-thread CPU ms per task, scheduler CPU ms per task, graph updates) of one repetition."""
    coalescer = client._submissions
    updates0, maps = coalescer.updates, 0
    gc.collect()
    start, cpu0, sched0 = time.perf_counter(), time.thread_time(), scheduler_cpu()
    futures = []
    for first in range(0, n_tasks, burst):
        ids = range(first, min(first + burst, n_tasks))
        if mode == "before":
            futures += client.map(call, [noop] * len(ids), [{"x": i} for i in ids], pure=False, gpu_options=GPU_OPTIONS)
            maps += 1
        else:
            futures += [client.submit(noop, i, pure=False, gpu_options=GPU_OPTIONS) for i in ids]
        await asyncio.sleep(0)  # the next requests come in the next turn
    await client.gather(futures)
    seconds = time.perf_counter() - start
    cpu, sched = time.thread_time() - cpu0, scheduler_cpu() - sched0
    return n_tasks / seconds, cpu * 1e3 / n_tasks, sched * 1e3 / n_tasks, coalescer.updates - updates0 + maps


MODES = {
    "now: client coalescer only (single submits)": "now",
    "before: gateway map per turn + client coalescer": "before",
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--burst", type=int, default=20, help="submissions per event-loop turn")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    quiet()
    from altlas_dask.client.gpu_client import Client
    from altlas_dask.ops.launcher import start_cluster

    info, load_start = machine(), load_average()
    cluster = start_cluster(bench_config(), simulate=N_GPUS)
    scheduler_cpu = scheduler_cpu_clock(cluster.cluster)
    results: dict[str, list[tuple[float, float, float, int]]] = {name: [] for name in MODES}

    async def measure() -> None:
        client = await Client(cluster.scheduler_address, asynchronous=True, set_as_default=False)
        try:
            await client.gather([client.submit(noop, i, pure=False, gpu_options=GPU_OPTIONS) for i in range(200)])
            for rep in range(args.reps):
                for name in MODES if rep % 2 == 0 else reversed(list(MODES)):
                    results[name].append(await run_mode(client, MODES[name], args.tasks, args.burst, scheduler_cpu))
                    print(f"rep {rep + 1} {name}: {results[name][-1]}", flush=True)
        finally:
            await client.close()

    try:
        asyncio.run(measure())
    finally:
        cluster.close()
    rows = []
    for name, runs in results.items():
        rate, cpu, sched, updates = (statistics.median(r[i] for r in runs) for i in range(4))
        rows.append(
            [name, f"{rate:.0f}", ", ".join(f"{r[0]:.0f}" for r in runs), f"{cpu:.3f}", f"{sched:.3f}", updates]
        )
    body = "\n".join(
        [
            "## One coalescer at the gateway (`bench/gateway_coalescing.py`)",
            "",
            f"Command: `{command('gateway_coalescing.py', argv)}`  ",
            f"Machine: {machine_line(info)}  ",
            f"Load average (1 min) at start / end: {load_start} / {load_average()} (a machine shared with other jobs).",
            "",
            f"{args.tasks} no-op tasks on {N_GPUS} simulated GPUs through an asynchronous `altlas_dask.Client`, "
            f"{args.burst} submitted per event-loop turn; medians of {args.reps} alternating repetitions. *now*: the "
            "gateway's `Client.submit` per request, grouped by the client's coalescer; *before*: the gateway's own "
            "coalescer mapped the requests of a turn into one `Client.map` (deleted in issue 25).",
            "",
            table(
                ["mode", "tasks/s", "repetitions", "gateway CPU ms/task", "scheduler CPU ms/task", "graph updates"],
                rows,
            ),
        ]
    )
    print(body)
    if not args.no_write:
        write_section("gateway-coalescing", body)


if __name__ == "__main__":
    main()
