"""Data locality on a real cluster (issue 11 item 7): a two-stage GPU pipeline, bytes moved between workers.

N items on 4 identical simulated GPUs (one Dask worker process each). Item i: a GPU preprocess step
(``run_on_gpu(PRE_GFLOP)``, then it returns a ``ITEM_MB`` numpy array), and a GPU inference step on that
array (``run_on_gpu(INFER_GFLOP)``, returns a small dict). Both steps of all items are submitted at once;
the client keeps only the inference futures (Dask frees each array once its inference has run).

Systems, interleaved (the order rotates every repetition), a fresh cluster per run:
- ``locality``: the router, ``earliest_finish`` (the default), ``gpu.multi_gpu.data_locality: true``;
- ``no-locality``: the same with ``data_locality: false`` (the placement before issue 11 item 7);
- ``plain``: plain Dask, no router (``resources={"GPU": 1}``; Dask's ``worker_objective`` weighs the bytes).

Bytes moved come from Dask's own transfer records on every worker: the sum of ``total`` over
``Worker.transfer_incoming_log`` (what each worker fetched from another worker, one entry per
``gather_dep``) and ``WorkerState.transfer_incoming_count_total``, taken before and after the batch.
Makespan runs from the first submit to the last inference result; throughput = items / makespan.
A warm-up pipeline with tiny arrays runs first on each cluster (the router learns both steps' times).

Run: ``.venv/bin/python bench/locality.py [--items 48] [--mb 100] [--reps 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from common import (
    bench_config,
    command,
    load_average,
    machine,
    machine_line,
    pool_override,
    quiet,
    table,
    verdict,
    write_section,
)

SYSTEMS = ("locality", "no-locality", "plain")
GPUS = 4
PRE_GFLOP, INFER_GFLOP, MEMORY_MB = 50.0, 100.0, 1024
POOL = {"name": "Simulated A100 40GB", "memory_mb": 40960, "speed_gflops": 1000.0, "count": GPUS}


def preprocess(item: int, mb: float, touch: bool = False):
    """GPU preprocessing: modelled device time, then an ``mb`` MB array (the item's tensor)."""
    import numpy as np

    from altlas_dask.worker.kernels import run_on_gpu

    run_on_gpu(PRE_GFLOP, MEMORY_MB)
    # np.zeros maps zeroed pages lazily: making the array costs no CPU here (on a real GPU it is device memory),
    # while moving it to another worker sends all its bytes.
    out = np.zeros(int(mb * 1e6 / 8))
    if touch:  # --touch: write every byte (CPU-bound preprocessing, as on a CPU-only test box)
        out.fill(1.0)
    out[0] = item
    return out


def infer(data) -> dict[str, Any]:
    """GPU inference on the preprocessed array: modelled device time; a small result."""
    from altlas_dask.worker.kernels import run_on_gpu

    result = run_on_gpu(INFER_GFLOP, MEMORY_MB)
    return {"gpu": result["gpu"], "value": float(data[0]), "nbytes": int(data.nbytes)}


def transfer_totals(dask_worker) -> dict[str, int]:
    """Dask's own transfer records on one worker: bytes and count fetched from other workers."""
    log = dask_worker.transfer_incoming_log
    return {
        "bytes": sum(entry["total"] for entry in log),
        "log_entries": len(log),
        "count": dask_worker.state.transfer_incoming_count_total,
        "seconds": sum(entry["duration"] for entry in log),
    }


def summed(client) -> dict[str, float]:
    per_worker = client.run(transfer_totals)
    return {k: sum(w[k] for w in per_worker.values()) for k in ("bytes", "log_entries", "count", "seconds")}


def pipeline(client, items: int, mb: float, router: bool, touch: bool = False) -> list:
    """Submit both steps of every item; keep only the inference futures."""
    out = []
    for i in range(items):
        if router:
            pre = client.submit(preprocess, i, mb, touch, pure=False, gpu_options={"task_type": "preprocess"})
            out.append(client.submit(infer, pre, pure=False, gpu_options={"task_type": "inference"}))
        else:
            pre = client.submit(preprocess, i, mb, touch, pure=False, resources={"GPU": 1})
            out.append(client.submit(infer, pre, pure=False, resources={"GPU": 1}))
        del pre
    return out


def run_once(system: str, items: int, mb: float, touch: bool = False, sets: tuple[str, ...] = ()) -> dict[str, Any]:
    import distributed

    from altlas_dask.ops.launcher import start_cluster

    router = system != "plain"
    overrides = [pool_override(POOL), *sets]
    if system == "no-locality":
        overrides.append("gpu.multi_gpu.data_locality=false")
    cluster = start_cluster(bench_config(*overrides), simulate=GPUS, router=router)
    try:
        client = cluster.client() if router else distributed.Client(cluster.cluster)
        try:
            client.gather(pipeline(client, 2 * GPUS, 0.01, router))  # warm-up: tiny arrays
            time.sleep(1.2)  # the warm-up's 1 s utilization window passes
            before = summed(client)
            start = time.perf_counter()
            futures = pipeline(client, items, mb, router, touch)
            results = client.gather(futures)
            makespan = time.perf_counter() - start
            after = summed(client)
            away = []
            if router:  # the router's own account: inference steps placed away from their input
                away = [
                    f"{d['reason']}; rejected: {d.get('rejected')}; scores: {d.get('scores')}"
                    for d in client.explain_many(futures).values()
                    if " 0 of its " in d["reason"]
                ]
        finally:
            if not router:
                client.close()
    finally:
        cluster.close()
    assert sorted(r["value"] for r in results) == [float(i) for i in range(items)]
    assert all(abs(r["nbytes"] - mb * 1e6) < 8 for r in results)
    moved = {k: after[k] - before[k] for k in before}
    if after["log_entries"] >= 1000:  # Dask keeps the last 1,000 entries (distributed.admin.low-level-log-length)
        moved["bytes"] = float("nan")
    run = {
        "system": system,
        "makespan": makespan,
        "throughput": items / makespan,
        "mb_moved": moved["bytes"] / 1e6,
        "transfers": moved["count"],
        "transfer_s": moved["seconds"],  # Dask's own duration of each fetch, summed
        "per_gpu": [sum(r["gpu"] == g for r in results) for g in range(GPUS)],
        "load": load_average(),
        "away": len(away),
    }
    for reason in away[:3]:
        print(f"  placed away from its input: {reason}", flush=True)
    print(
        f"{system:12s} makespan {makespan:6.2f} s, {run['throughput']:5.2f} items/s, moved {run['mb_moved']:8.0f} MB"
        f" in {run['transfers']} transfers ({run['transfer_s']:.1f} s), inference per GPU {run['per_gpu']},"
        f" load {run['load']}",
        flush=True,
    )
    return run


def spread(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def scenario(name: str, args: argparse.Namespace, touch: bool) -> tuple[str, list[str]]:
    """Run every system ``args.reps`` times, interleaved; a markdown block and the goal rows."""
    load_before = load_average()
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SYSTEMS}
    in_order: list[dict[str, Any]] = []
    for rep in range(args.reps):
        order = SYSTEMS[rep % len(SYSTEMS) :] + SYSTEMS[: rep % len(SYSTEMS)]
        for system in order:
            in_order.append(run_once(system, args.items, args.mb, touch, tuple(args.set)))
            runs[system].append(in_order[-1])

    def med(system: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[system])

    rows = [
        [
            s,
            spread([r["mb_moved"] for r in runs[s]], ",.0f"),
            spread([r["transfers"] for r in runs[s]], ".0f"),
            spread([r["transfer_s"] for r in runs[s]], ".1f"),
            spread([r["makespan"] for r in runs[s]], ".2f"),
            spread([r["throughput"] for r in runs[s]], ".2f"),
            spread([r["away"] for r in runs[s]], ".0f") if s != "plain" else "n/a",
        ]
        for s in SYSTEMS
    ]
    off, on = med("no-locality", "mb_moved"), med("locality", "mb_moved")
    reduction = 1 - on / off if off else float("nan")
    kept = med("locality", "throughput") / med("no-locality", "throughput")
    vs_plain = med("locality", "throughput") / med("plain", "throughput")
    goals = [
        [f"{name}: bytes moved >= 80% below no-locality", f"{reduction:.0%} below", verdict(reduction >= 0.8)],
        [f"{name}: no loss of throughput vs no-locality", f"{kept:.2f}x", verdict(kept >= 1.0)],
        [f"{name}: throughput vs plain Dask", f"{vs_plain:.2f}x", "(reference)"],
    ]
    headers = ["system", "MB moved", "transfers", "fetch s (summed)", "makespan s", "items/s", "placed away"]
    block = "\n\n".join(
        [
            f"### {name} (load average {load_before} before, {load_average()} after)",
            table(headers, rows),
            "Runs, in order: "
            + "; ".join(
                f"{r['system']} {r['makespan']:.2f} s / {r['mb_moved']:,.0f} MB (load {r['load']})" for r in in_order
            )
            + ".",
        ]
    )
    return block, goals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=48)
    parser.add_argument("--mb", type=float, default=100.0, help="MB each preprocess step produces")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--touch", action="store_true", help="also the CPU-bound variant: preprocess writes every byte")
    parser.add_argument("--set", action="append", default=[], help="cluster.yaml override for every run")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    quiet()
    info = machine()
    blocks, goals = [], []
    for name, touch in (("lazy arrays", False), ("CPU-bound preprocess (--touch)", True)):
        if touch and not args.touch:
            continue
        block, rows = scenario(name, args, touch)
        blocks.append(block)
        goals += rows
    body = "\n\n".join(
        [
            "## Data locality on the cluster (issue 11 item 7, `bench/locality.py`)",
            f"`{command('locality.py')}`; {machine_line(info)}.",
            f"{args.items} items on {GPUS} identical simulated GPUs (one worker process each, 8 slots): a GPU "
            f"preprocess step ({PRE_GFLOP:.0f} GFLOP) returning a {args.mb:.0f} MB numpy array, then a GPU inference "
            f"step ({INFER_GFLOP:.0f} GFLOP) on it; both steps of every item submitted at once. `lazy arrays`: the "
            "array is `np.zeros` (its pages are mapped lazily, so making it costs no CPU, as a device buffer would "
            "not on a real GPU; moving it sends every byte). `CPU-bound preprocess`: the step writes every byte "
            "(on this 2-core machine that CPU work dominates and inflates the learned run times). Bytes moved: Dask's "
            "own records, the sum over workers of `Worker.transfer_incoming_log` totals (transfers: "
            "`WorkerState.transfer_incoming_count_total`; fetch s: the logged durations, summed), around the batch. "
            "Placed away: inference steps the router placed on a GPU without their input (its explanation). "
            f"Median (min-max) of {args.reps} runs per system, interleaved, a fresh cluster per run. `locality`: the "
            "router, `earliest_finish`, `gpu.multi_gpu.data_locality: true` (the default); `no-locality`: the same "
            "with `data_locality: false` (the placement before item 7); `plain`: Dask without the router "
            '(`resources={"GPU": 1}`).',
            *blocks,
            table(["goal", "measured", "verdict"], goals),
        ]
    )
    print(body)
    if not args.no_write:
        write_section("locality", body)


if __name__ == "__main__":
    main()
