"""Multi-GPU scaling: a fixed batch of modelled-GPU-time tasks on 1, 2, 4 and 8 identical virtual GPUs.

256 tasks, each ``run_on_gpu(100 GFLOP, 1024 MB)`` = 0.1 s of device time on a 1,000 GFLOP/s virtual
GPU (kernels time-share a device, so one GPU does 10 tasks/s however many run on it at once). The
pool is defined with a ``simulation.gpus`` override (8 identical GPUs; ``simulate=N`` takes the
first N). The router places every task with ``least_loaded``. Threads per worker =
``max_concurrent_tasks_per_gpu`` (``gpu.multi_gpu``), as the launcher sets them. One fresh cluster
per GPU count; after a warm-up, the batch goes in as one ``client.map`` and the clock runs from the
``map`` call to the last result. Speedup = makespan(1 GPU) / makespan(N GPUs), medians over the
repetitions.

Diagnosis, same run, 8 GPUs: the same batch on plain Dask (``router=False``,
``resources={"GPU": 1}``) next to the router's, with where the time goes: submit -> first task start, device idle
inside each GPU's busy span, spread of the GPUs' last task ends, last task end -> results back.

Run: ``.venv/bin/python bench/scaling.py [--reps 3] [--tasks 256] [--work 100] [--no-diagnosis]``.

Pre-placement (issue 11 item 6): ``--prefetch GPUS --depths 0,1,2 [--slots 8,1] [--reps 5]`` runs only
the comparison: the same batch on GPUS GPUs with plain Dask and with the router at each
``max_concurrent_tasks_per_gpu`` x ``gpu.multi_gpu.prefetch_depth``, interleaved (one fresh cluster per
run, the order rotated every repetition), and writes the ``prefetch`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from collections import Counter, deque
from typing import Any

from common import (
    BENCH_DIR,
    bench_config,
    command,
    load_average,
    machine,
    machine_line,
    pool_override,
    quiet,
    scheduler_cpu_clock,
    table,
    verdict,
    write_section,
)

GPU_COUNTS = (1, 2, 4, 8)
DIAGNOSIS_GPUS = 8
SPEED_GFLOPS = 1000.0
MEMORY_MB = 1024
TARGETS = {2: 1.95, 4: 3.8, 8: 7.2}
POOL = {
    "name": "Simulated A100 40GB",
    "memory_mb": 40960,
    "compute_capability": "8.0",
    "speed_gflops": SPEED_GFLOPS,
    "count": max(GPU_COUNTS),
}


def timed_run(work_gflop: float, memory_mb: int) -> dict[str, Any]:
    """``run_on_gpu`` plus wall-clock start/end on the worker (same host clock as the client)."""
    from altlas_dask.worker.kernels import run_on_gpu

    start = time.time()
    result = run_on_gpu(work_gflop, memory_mb)
    return {**result, "start": start, "end": time.time()}


def run_batch(
    n_gpus: int,
    n_tasks: int,
    work: float,
    reps: int,
    overrides: tuple[str, ...] = (),
    router: bool = True,
    strategy: str = "least_loaded",
) -> list[dict[str, Any]]:
    import distributed

    from altlas_dask.ops.launcher import start_cluster

    config = bench_config(pool_override(POOL), *overrides)
    cluster = start_cluster(config, simulate=n_gpus, router=router)
    out = []
    try:
        if router:
            client = cluster.client()
            plugin = cluster.cluster.scheduler.plugins["altlas-router"].core  # the scheduling core
            options = {"strategy": strategy, "task_type": "scaling"}

            def submit(w, m):
                return client.map(timed_run, w, m, pure=False, gpu_options=options)
        else:
            client = distributed.Client(cluster.cluster)
            plugin = None

            def submit(w, m):
                return client.map(timed_run, w, m, pure=False, resources={"GPU": 1})

        sched_cpu = scheduler_cpu_clock(cluster.cluster)
        distributed.wait(submit([1.0] * (2 * n_gpus), [0] * (2 * n_gpus)))  # warm-up
        for _ in range(reps):
            time.sleep(1.2)  # let the 1 s utilization window of the warm-up (or previous run) pass
            if plugin is not None:
                plugin.state.decision_seconds = deque()  # unbounded for this run (the router's own timer)
                held0 = plugin.counters.get("held", 0)
            cpu0 = sched_cpu()
            start, wall0 = time.perf_counter(), time.time()
            futures = submit([work] * n_tasks, [MEMORY_MB] * n_tasks)
            results = client.gather(futures)
            makespan, wall1 = time.perf_counter() - start, time.time()
            cpu = sched_cpu() - cpu0
            del futures
            out.append(_summarise(n_gpus, results, makespan, wall0, wall1, cpu, plugin, held0 if plugin else 0))
        if not router:
            client.close()
    finally:
        cluster.close()
    return out


def ray_batch(python: str, n_gpus: int, slots: int, n_tasks: int, work: float) -> list[dict[str, Any]]:
    """The same batch on Ray (bench/scaling_ray.py in ``python``'s environment): one fresh Ray per run."""
    argv = [python, str(BENCH_DIR / "scaling_ray.py"), str(n_gpus), str(slots), str(n_tasks), str(work / SPEED_GFLOPS)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True)
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    data = json.loads(line.removeprefix("RESULT "))
    return [_summarise(n_gpus, data["results"], data["makespan"], data["wall0"], data["wall1"], 0.0, None, 0)]


def _summarise(n_gpus, results, makespan, wall0, wall1, cpu, plugin, held0) -> dict[str, Any]:
    per_gpu = Counter(r["gpu"] for r in results)
    ends, idle = [], []
    for g in per_gpu:
        mine = [r for r in results if r["gpu"] == g]
        ends.append(max(r["end"] for r in mine))
        # the device is time-shared (one kernel at a time), so span - device time = device idle time
        idle.append(ends[-1] - min(r["start"] for r in mine) - sum(r["device_seconds"] for r in mine))
    run = {
        "gpus": n_gpus,
        "makespan": makespan,
        "ideal": sum(r["device_seconds"] for r in results) / n_gpus,
        "per_gpu": [per_gpu.get(i, 0) for i in range(n_gpus)],
        "scheduler_cpu": cpu,
        "decisions": len(plugin.decision_seconds) if plugin is not None else 0,
        "decide_s": sum(plugin.decision_seconds) if plugin is not None else 0.0,
        "held": plugin.counters.get("held", 0) - held0 if plugin is not None else 0,
        "first_start": min(r["start"] for r in results) - wall0,
        "idle": statistics.fmean(idle),
        "end_spread": max(ends) - min(ends),
        "tail": wall1 - max(ends),
    }
    print(
        f"{n_gpus} GPU(s): {makespan:6.2f} s (ideal {run['ideal']:.2f} s, {run['ideal'] / makespan:.1%}), "
        f"tasks per GPU {run['per_gpu']}, scheduler CPU {cpu:.2f} s, {run['decisions']} decisions "
        f"({run['decide_s']:.2f} s), {run['held']} held; first start {run['first_start'] * 1e3:.0f} ms, "
        f"device idle per GPU {run['idle']:.2f} s, GPUs finish within {run['end_spread']:.2f} s, "
        f"last end -> results {run['tail'] * 1e3:.0f} ms",
        flush=True,
    )
    return run


def med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def plot(summary: dict[int, dict[str, float]], diagnosis: dict[str, list[dict[str, Any]]], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted(summary)
    fig, axes = plt.subplots(1, 3 if diagnosis else 2, figsize=(16 if diagnosis else 11, 4.5))
    ax1, ax2 = axes[0], axes[1]
    ax1.plot(counts, counts, "--", color="grey", label="linear")
    ax1.plot(counts, [summary[n]["speedup"] for n in counts], "o-", color="#1f77b4", label="measured (median)")
    ax1.scatter(list(TARGETS), list(TARGETS.values()), marker="x", color="red", zorder=3, label="target")
    ax1.set_xlabel("simulated GPUs")
    ax1.set_ylabel("speedup vs 1 GPU")
    ax1.set_xticks(counts)
    ax1.legend()
    ax1.set_title("Speedup, router ON (least_loaded)")
    ax2.bar([str(n) for n in counts], [summary[n]["makespan"] for n in counts], color="#1f77b4", label="measured")
    ax2.plot(
        [str(n) for n in counts],
        [summary[n]["ideal"] for n in counts],
        "o--",
        color="grey",
        label="ideal (device time / N)",
    )
    ax2.set_xlabel("simulated GPUs")
    ax2.set_ylabel("makespan s")
    ax2.legend()
    ax2.set_title("Makespan of the batch")
    if diagnosis:
        ax3 = axes[2]
        names = list(diagnosis)
        parts = (
            ("ideal", "device time / N", "#cccccc"),
            ("first_start", "submit -> first start", "#ff7f0e"),
            ("idle", "device idle per GPU (mean)", "#d62728"),
            ("end_spread", "GPU finish spread", "#9467bd"),
            ("tail", "last end -> results", "#8c564b"),
        )
        bottom = [0.0] * len(names)
        for key, label, color in parts:
            vals = [med(diagnosis[n], key) for n in names]
            ax3.bar(names, vals, bottom=bottom, color=color, label=label)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax3.scatter(names, [med(diagnosis[n], "makespan") for n in names], color="black", zorder=3, label="makespan")
        ax3.set_ylabel("s")
        ax3.set_title(f"Where the time goes, {DIAGNOSIS_GPUS} GPUs (approximate)")
        ax3.legend(fontsize=7)
        ax3.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def prefetch_comparison(n_gpus: int, depths: list[int], slot_counts: list[int], args: argparse.Namespace) -> None:
    """Plain Dask against the router at each slots x pre-placement depth, interleaved; the ``prefetch`` section."""
    from altlas_dask.config import PREFETCH_DEPTH

    info, load_start, t_start = machine(), load_average(), time.perf_counter()
    plain_name = "plain Dask, resources GPU=1"
    configs: dict[str, tuple[str, ...] | None] = {plain_name: None}
    for slots in slot_counts:
        for depth in depths:
            configs[f"router, {slots} slots, prefetch_depth {depth}"] = (
                f"gpu.multi_gpu.max_concurrent_tasks_per_gpu={slots}",
                f"gpu.multi_gpu.prefetch_depth={depth}",
            )
    ray_name = f"Ray, num_gpus=1/{max(slot_counts)}"
    if args.ray:
        configs[ray_name] = ()
    names = list(configs)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    loads: list[float] = []
    for rep in range(args.reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            print(f"rep {rep + 1}/{args.reps}: {name}", flush=True)
            overrides = configs[name]
            if name == ray_name:
                runs[name] += ray_batch(args.ray, n_gpus, max(slot_counts), args.tasks, args.work)
            else:
                runs[name] += run_batch(
                    n_gpus, args.tasks, args.work, 1, overrides or (), overrides is not None, args.strategy
                )
            loads.append(float(load_average()))
    elapsed = time.perf_counter() - t_start
    plain = med(runs[plain_name], "makespan")
    rows = [
        [
            name,
            f"{med(rs, 'makespan'):.2f}",
            ", ".join(f"{r['makespan']:.2f}" for r in rs),
            f"{max(r['makespan'] for r in rs) - min(r['makespan'] for r in rs):.2f}",
            f"{med(rs, 'ideal') / med(rs, 'makespan'):.1%}",
            f"{med(rs, 'makespan') / plain - 1:+.1%}",
            f"{med(rs, 'idle'):.2f}",
            f"{med(rs, 'first_start') * 1e3:.0f}",
            f"{med(rs, 'tail') * 1e3:.0f}",
            f"{med(rs, 'scheduler_cpu'):.2f}" if name != ray_name else "-",
            verdict(med(rs, "makespan") <= plain) if name not in (plain_name, ray_name) else "-",
        ]
        for name, rs in runs.items()
    ]
    report = "\n".join(
        [
            f"## {args.title}",
            "",
            f"Command: `{command('scaling.py')}`  ",
            f"Machine: {machine_line(info)}  ",
            f"Load average (1 min) at start / end: {load_start} / {load_average()}; median after each run "
            f"{statistics.median(loads):.2f} (min {min(loads):.2f}, max {max(loads):.2f}); wall time {elapsed:.0f} s",
            "",
            f"{args.tasks} tasks x `run_on_gpu({args.work:g} GFLOP, {MEMORY_MB} MB)` = {args.work / SPEED_GFLOPS:g} s "
            f"of device time each on {n_gpus} identical virtual GPUs (kernels take the device in turn), one "
            "`client.map`. Plain Dask: `router=False`, `resources={'GPU': 1}` (one task at a time per worker, all "
            f"assigned up front). Router: `{args.strategy}`, *slots* = `max_concurrent_tasks_per_gpu` = threads per "
            "worker running at once, plus `prefetch_depth` more placed on each GPU's worker. Ray (if run): "
            "bench/scaling_ray.py, `num_gpus=1/slots`, a lock file per GPU so its kernels take the device in turn, "
            "workers started before timing, one fresh Ray per run. One fresh cluster per "
            f"run, configurations interleaved (order rotated every repetition), {args.reps} repetitions each. "
            "Efficiency = ideal (device time / GPUs) / makespan; device idle = each GPU's busy span minus its "
            "device time (mean over GPUs).",
            "",
            table(
                [
                    "configuration",
                    "makespan s (median)",
                    "repetitions s",
                    "spread s",
                    "efficiency",
                    "vs plain Dask",
                    "device idle per GPU s",
                    "submit -> first start ms",
                    "last end -> results ms",
                    "scheduler CPU s",
                    "efficiency >= plain Dask's",
                ],
                rows,
            ),
            f"\nThe default `prefetch_depth` when this ran: {PREFETCH_DEPTH}.",
        ]
    )
    print("\n" + report)
    write_section(args.section, report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=256)
    parser.add_argument("--work", type=float, default=100.0, help="GFLOP per task (1,000 GFLOP/s GPUs)")
    parser.add_argument("--no-diagnosis", action="store_true", help="skip the 8-GPU plain Dask reference")
    parser.add_argument("--prefetch", type=int, metavar="GPUS", help="only the pre-placement comparison on GPUS GPUs")
    parser.add_argument("--depths", default="0,1,2", help="prefetch_depth values for --prefetch")
    parser.add_argument("--slots", default="8", help="max_concurrent_tasks_per_gpu values for --prefetch")
    parser.add_argument("--strategy", default="least_loaded", help="the router's strategy for --prefetch")
    parser.add_argument("--ray", metavar="PYTHON", help="with --prefetch: also Ray, run by this interpreter")
    parser.add_argument("--section", default="prefetch", help="with --prefetch: the bench/RESULTS.md section")
    parser.add_argument(
        "--title",
        default="Pre-placement on the cluster (`bench/scaling.py --prefetch`, issue 11 item 6)",
        help="with --prefetch: the section's title",
    )
    args = parser.parse_args()
    quiet()
    if args.prefetch:
        depths, slots = ([int(v) for v in arg.split(",")] for arg in (args.depths, args.slots))
        prefetch_comparison(args.prefetch, depths, slots, args)
        return
    info = machine()
    load_start = load_average()
    t_start = time.perf_counter()
    runs: dict[int, list[dict[str, Any]]] = {}
    for n in GPU_COUNTS:
        runs[n] = run_batch(n, args.tasks, args.work, args.reps)
    diagnosis: dict[str, list[dict[str, Any]]] = {}
    if not args.no_diagnosis:
        diagnosis["router (least_loaded)"] = runs[DIAGNOSIS_GPUS]
        print("diagnosis: plain Dask, router=False, resources={'GPU': 1}")
        diagnosis["plain Dask, resources GPU=1"] = run_batch(
            DIAGNOSIS_GPUS, args.tasks, args.work, args.reps, router=False
        )
    elapsed = time.perf_counter() - t_start

    summary = {n: {k: med(rs, k) for k in ("makespan", "ideal", "scheduler_cpu")} for n, rs in runs.items()}
    for n in summary:
        summary[n]["speedup"] = summary[1]["makespan"] / summary[n]["makespan"]
    max_concurrent = bench_config(pool_override(POOL)).routing().max_concurrent_tasks_per_gpu
    rows = []
    for n in GPU_COUNTS:
        s, rs = summary[n], runs[n]
        target = TARGETS.get(n)
        rows.append(
            [
                n,
                f"{s['makespan']:.2f}",
                ", ".join(f"{r['makespan']:.2f}" for r in rs),
                f"{s['ideal']:.2f}",
                f"{s['ideal'] / s['makespan']:.1%}",
                f"{s['speedup']:.2f}x",
                f">= {target}x" if target else "-",
                verdict(s["speedup"] >= target) if target else "-",
                " / ".join(str(c) for c in rs[-1]["per_gpu"]),
                f"{s['scheduler_cpu']:.2f}",
                f"{med(rs, 'decisions'):.0f}",
                f"{med(rs, 'held'):.0f}",
            ]
        )
    lines = [
        "## Multi-GPU scaling (`bench/scaling.py`)",
        "",
        f"Command: `{command('scaling.py')}`  ",
        f"Machine: {machine_line(info)}  ",
        f"Load average (1 min) at start / end: {load_start} / {load_average()}; wall time of the script: "
        f"{elapsed:.0f} s",
        "",
        f"{args.tasks} tasks x `run_on_gpu({args.work:g} GFLOP, {MEMORY_MB} MB)` = "
        f"{args.work / SPEED_GFLOPS:g} s of device time each on identical virtual GPUs ({SPEED_GFLOPS:g} GFLOP/s, "
        f"`simulation.gpus` override), router ON, strategy `least_loaded`, one `client.map`; "
        f"max_concurrent_tasks_per_gpu = threads per worker = {max_concurrent}. Median of {args.reps} "
        "repetitions per GPU count, one fresh cluster per count. Ideal = total device time / N. "
        "Scheduler CPU = CPU time of the scheduler's event-loop thread during the batch; `_decide` calls from the "
        "router's `decision_seconds`; held = tasks that went to `no-worker`.",
        "",
        table(
            [
                "GPUs",
                "makespan s (median)",
                "repetitions s",
                "ideal s",
                "efficiency",
                "speedup",
                "target",
                "verdict",
                "tasks per GPU (last rep)",
                "scheduler CPU s",
                "_decide calls",
                "held",
            ],
            rows,
        ),
        "",
    ]
    if diagnosis:
        diag_rows = [
            [
                name,
                f"{med(rs, 'makespan'):.2f}",
                f"{med(rs, 'ideal') / med(rs, 'makespan'):.1%}",
                f"{med(rs, 'first_start') * 1e3:.0f}",
                f"{med(rs, 'idle'):.2f}",
                f"{med(rs, 'end_spread'):.2f}",
                f"{med(rs, 'tail') * 1e3:.0f}",
                f"{med(rs, 'decisions'):.0f}" if "router" in name else "-",
                f"{med(rs, 'scheduler_cpu'):.2f}",
            ]
            for name, rs in diagnosis.items()
        ]
        lines += [
            f"### What limits it: {DIAGNOSIS_GPUS} GPUs, same batch, same run (median of {args.reps})",
            "",
            "Plain Dask = `router=False`, `client.map(..., resources={'GPU': 1})` on the same pool (each worker runs "
            "one task at a time, all tasks assigned up front). Times from wall clocks taken on the workers (same "
            "host): submit -> first task start; device idle inside each GPU's busy span (span - its device time, "
            "mean over GPUs); spread between the GPUs' last task ends; last task end -> all results back in the "
            "client.",
            "",
            table(
                [
                    "configuration",
                    "makespan s",
                    "efficiency",
                    "submit -> first start ms",
                    "device idle per GPU s",
                    "GPU finish spread s",
                    "last end -> results ms",
                    "_decide calls",
                    "scheduler CPU s",
                ],
                diag_rows,
            ),
            "",
        ]
    lines += ["![scaling](scaling.png)"]
    report = "\n".join(lines)
    print("\n" + report)
    plot(summary, diagnosis, BENCH_DIR / "scaling.png")
    write_section("scaling", report)
    print(f"\nwrote {BENCH_DIR / 'RESULTS.md'} and {BENCH_DIR / 'scaling.png'} in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
