"""Replay speed: the heterogeneous Poisson mix on a large modelled pool, in virtual time, on one core.

Pool: ``--gpus`` modelled GPUs, half A100 80GB (2,000 GFLOP/s) and half T4 16GB (500 GFLOP/s), as
bench/strategies.py's pool scaled up. Trace: bench/strategies.py's three task classes with Poisson
arrivals offering ``--load`` of the pool's GFLOP/s, ``--tasks`` tasks. The replay runs the scheduling
core itself (every decision, quota, fair-share and health check), so its speed is the core's speed.
Measured: wall and CPU seconds of the replay alone (the trace is generated before the clock starts).

Run: ``.venv/bin/python bench/replay.py [--tasks 100000] [--gpus 64] [--load 0.6] [--strategy S ...]``;
``--prefetch``: only the pre-placement depth evaluation (issue 11 item 6, its own RESULTS.md section).
"""

from __future__ import annotations

import argparse
import json
import time

from common import command, load_average, machine, machine_line, pct, table, verdict, write_section

from altlas_dask.config import load_config
from altlas_dask.simulation import scenarios
from altlas_dask.simulation.engine import replay
from altlas_dask.simulation.metrics import summarize

TARGET_S = 60.0


def config_for(gpus: int):
    pool = [dict(g, count=gpus // 2) for g in scenarios.HETEROGENEOUS_POOL]
    overrides = ["accounting.database=:memory:", "simulation.gpus=" + json.dumps(pool)]
    return load_config(overrides=overrides, environ={}), scenarios.pool_gflops(tuple(pool))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--load", type=float, default=0.6, help="offered share of the pool's GFLOP/s")
    parser.add_argument("--strategy", action="append", help="default: the config's default strategy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefetch", action="store_true", help="only the pre-placement evaluation (issue 11 item 6)")
    args = parser.parse_args()
    if args.prefetch:
        report = prefetch_in_simulator()
        print(report)
        write_section("prefetch_sim", report)
        return
    info, load_start = machine(), load_average()
    config, gflops = config_for(args.gpus)
    rate = args.load * gflops / scenarios.MEAN_GFLOP
    trace = scenarios.heterogeneous(args.tasks / rate, args.load, args.seed, gflops=gflops)
    rows, ok = [], True
    for name in args.strategy or [config.routing().default_strategy]:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = replay(config, trace, name, seed=args.seed)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        lat = [o.done - o.task.t for o in result.outcomes if o.status == "completed"]
        ok &= cpu < TARGET_S
        rows.append([
            name, f"{len(trace):,}", f"{len(lat):,}", f"{result.end:.0f}", f"{result.events:,}", f"{wall:.1f}",
            f"{cpu:.1f}", f"{len(trace) / cpu:,.0f}", f"{result.end / cpu:.1f}",
            f"{pct(lat, 50) * 1e3:.0f} / {pct(lat, 95) * 1e3:.0f}",
        ])  # fmt: skip
        print(" | ".join(rows[-1]), flush=True)
    report = "\n".join([
        "## Replay speed (`bench/replay.py`)",
        "",
        f"Command: `{command('replay.py')}`  ",
        f"Machine: {machine_line(info)}  ",
        f"Load average (1 min) at start / end: {load_start} / {load_average()} (CPU seconds are the replay "
        "process's own, so other work on the machine inflates wall time, not them)",
        "",
        f"{args.gpus} modelled GPUs ({args.gpus // 2} x A100 80GB at 2,000 GFLOP/s + {args.gpus // 2} x T4 16GB at "
        f"500 GFLOP/s), bench/strategies.py's task mix, Poisson arrivals offering {args.load:.0%} of "
        f"{gflops:,.0f} GFLOP/s, seed {args.seed}. One process, one core; the scheduling core makes every "
        "decision (altlas_dask/simulation/).",
        "",
        table(
            ["strategy", "tasks", "completed", "virtual s", "events", "wall s", "CPU s", "tasks / CPU s",
             "virtual s / CPU s", "p50 / p95 ms"],
            rows,
        ),  # fmt: skip
        "",
        table(
            ["target", "verdict"],
            [[f"{args.tasks:,} tasks on {args.gpus} GPUs in under {TARGET_S:.0f} s on one core (CPU s)", verdict(ok)]],
        ),
    ])  # fmt: skip
    report += "\n\n" + strategies_and_locality()
    print("\n" + report)
    write_section("replay", report)


def prefetch_in_simulator() -> str:
    """Issue 11 item 6 in the simulator: pre-placement depth (``gpu.multi_gpu.prefetch_depth``) against makespan of
    256 tasks of 0.1 s on 4 GPUs (by slots per GPU) and against latency on the shipped heterogeneous trace."""
    from altlas_dask.simulation.engine import Timing
    from altlas_dask.simulation.trace import TraceTask

    def config(pool: list[dict], slots: int | None, depth: int):
        extra = [f"gpu.multi_gpu.max_concurrent_tasks_per_gpu={slots}"] if slots else []
        overrides = ["accounting.database=:memory:", "simulation.gpus=" + json.dumps(pool), *extra]
        return load_config(overrides=[*overrides, f"gpu.multi_gpu.prefetch_depth={depth}"], environ={})

    depths = (0, 1, 2, 4)
    batch = [TraceTask(t=0.0, id=f"t{i}", work_gflop=100.0) for i in range(256)]
    pool = [{"name": "A100", "memory_mb": 40960, "speed_gflops": 1000, "count": 4}]
    base = Timing.from_config(config(pool, None, 0))  # simulation.latency
    slow = Timing(dispatch_s=base.dispatch_s * 4, report_s=base.report_s * 4)  # a loaded scheduler
    round_trip = {t: f"{(t.report_s + t.dispatch_s) * 1e3:.0f} ms" for t in (base, slow)}
    rows = []
    for slots in (8, 2, 1):
        for timing, label in ((base, round_trip[base]), (slow, round_trip[slow])):
            cells = []
            for depth in depths:
                s = summarize(replay(config(pool, slots, depth), batch, timing=timing))
                cells.append(f"{s['makespan_s']:.3f} s ({6.4 / s['makespan_s']:.1%})")
            rows.append([str(slots), label, *cells])
    het_pool = list(scenarios.HETEROGENEOUS_POOL)
    trace = scenarios.heterogeneous()
    lat = []
    for slots in (8, 2, 1):
        for name in ("round_robin", "least_loaded", "earliest_finish"):
            cells = []
            for depth in depths:
                s = summarize(replay(config(het_pool, slots, depth), trace, name))["latency_s"]
                cells.append(f"{s['p50'] * 1e3:.0f} / {s['p95'] * 1e3:.0f}")
            lat.append([str(slots), name, *cells])
    return "\n".join([
        "## Pre-placement in the simulator (`bench/replay.py --prefetch`, issue 11 item 6)",
        "",
        f"Command: `{command('replay.py')}`  ",
        f"Machine: {machine_line(machine())}",
        "",
        "256 tasks of 0.1 s submitted at once on 4 modelled GPUs (1,000 GFLOP/s, ideal makespan 6.4 s), the default "
        "strategy; makespan (efficiency) by slots per GPU (`max_concurrent_tasks_per_gpu` = worker threads) and "
        "`prefetch_depth`. A modelled worker runs at most *slots* tasks and starts its pre-placed ones, best rank "
        "first, the moment a thread frees; without them a freed slot waits for the scheduler's round trip (the "
        f"result's report + the next placement: {round_trip[base]} with `simulation.latency`'s defaults, "
        f"{round_trip[slow]} for a loaded scheduler). Deterministic: one run per cell.",
        "",
        table(["slots", "round trip", *(f"depth {d}" for d in depths)], rows),
        "",
        "The shipped `heterogeneous` trace (2 A100 + 2 T4, 283 tasks at 76% load): p50 / p95 latency ms by slots "
        "and depth. With 8 slots no GPU fills its slots on this trace (tasks wait on the scheduler only for memory), "
        "so depth changes nothing; with fewer slots a pre-placed task is bound to its GPU before it could start "
        "(early binding), which can cost p95 on a heterogeneous pool: the scheduler could have sent it to whichever "
        "GPU freed first.",
        "",
        table(["slots", "strategy", *(f"depth {d}" for d in depths)], lat),
    ])  # fmt: skip


def strategies_and_locality() -> str:
    """earliest_finish against round_robin and least_loaded on the shipped heterogeneous trace (bench/strategies.py's
    pool and arrivals, no warm-up), and bytes moved on the two-stage pipeline, in the simulator."""
    pool = ["accounting.database=:memory:", "simulation.gpus=" + json.dumps(list(scenarios.HETEROGENEOUS_POOL))]
    config = load_config(overrides=pool, environ={})
    trace = scenarios.heterogeneous()
    names = ("round_robin", "least_loaded", "hybrid", "earliest_finish")
    s = {n: summarize(replay(config, trace, n)) for n in names}
    p95 = {n: s[n]["latency_s"]["p95"] for n in names}
    rows = [
        [n, f"{s[n]['latency_s']['p50'] * 1e3:.0f}", f"{p95[n] * 1e3:.0f}", f"{1 - p95[n] / p95['round_robin']:+.0%}",
         f"{1 - p95[n] / p95['least_loaded']:+.0%}",
         " / ".join(f"{v * 1e3:.0f}" for v in s[n]["p95_by_task_type_s"].values())]
        for n in names
    ]  # fmt: skip
    pipe = scenarios.pipeline(items=100)
    moved = {n: summarize(replay(config, pipe, n)) for n in ("round_robin", "least_loaded", "earliest_finish")}
    base = moved["least_loaded"]["bytes_moved"]
    loc = [
        [n, f"{m['bytes_moved'] / 1e6:,.0f}", f"{1 - m['bytes_moved'] / base:+.0%}" if base else "-",
         f"{m['throughput_per_s']:.1f}", f"{m['latency_s']['p95'] * 1e3:.0f}"]
        for n, m in moved.items()
    ]  # fmt: skip
    ef = p95["earliest_finish"]
    rr_class = s["round_robin"]["p95_by_task_type_s"]
    return "\n".join([
        "### earliest_finish in the simulator",
        "",
        "The shipped `heterogeneous` trace (bench/strategies.py's pool of 2 A100 + 2 T4 and its seed-0 arrivals, "
        "283 tasks in 8 s at 76% load), replayed per strategy (`altlas-dask replay heterogeneous -s ...`):",
        "",
        table(["strategy", "p50 ms", "p95 ms", "p95 reduction vs round_robin", "p95 reduction vs least_loaded",
               "p95 ms embedding (small) / image_segmentation (medium) / text_generation (large)"], rows),
        "",
        table(["target", "verdict"], [
            ["earliest_finish p95 >= 30% below round_robin", verdict(ef <= 0.7 * p95["round_robin"])],
            ["earliest_finish p95 >= 20% below least_loaded", verdict(ef <= 0.8 * p95["least_loaded"])],
            ["no class starved: each class's p95 <= round_robin's", verdict(all(
                v <= rr_class[k] for k, v in s["earliest_finish"]["p95_by_task_type_s"].items()
            ))],
        ]),
        "",
        "### Data locality in the simulator",
        "",
        "The shipped `pipeline` trace: 100 items, each a GPU preprocess (40 GFLOP, 2 GB) producing 100 MB, then a "
        "GPU inference (80 GFLOP, 8 GB) on it; a task placed away from its input fetches it first (1 GB/s). "
        "Bytes moved between workers, against least_loaded (today's default):",
        "",
        table(["strategy", "MB moved", "reduction vs least_loaded", "throughput tasks/s", "p95 ms"], loc),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
