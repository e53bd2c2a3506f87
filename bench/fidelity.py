"""Fidelity on the cluster (issue 23 item 6): the default strategy on a real-trace window, cluster vs replay.

A window of ``--tasks`` requests of a public trace (default: the first 500 of ``azure_chat``, Azure LLM inference
2023, docs/replay.md) with its arrival times scaled to offer ``--load`` of the pool's GFLOP/s (bench/suite.py's
scaling), each request sent with its ``cost`` (tokens) as the trace states it. The pool and the harness are
bench/strategies.py's: 2 x A100 + 2 x T4 virtual GPUs, one Dask worker per GPU, ``run_on_gpu(work_gflop,
memory_mb)`` per request, the same warm-up before each run; ``--reps`` runs one after another on one cluster.
The replay (``altlas_dask.simulation``) gets the same arrivals after the same warm-up, with the config's
``simulation.latency``. Compared: p50 and p95 of arrival -> result (the cluster's median over runs), and the
path's parts, queue (submit -> start on the worker), run (start -> end, waiting for the time-shared device
included) and return (end -> the client's callback), to explain a gap by measured dispatch latency.

Run: ``.venv/bin/python bench/fidelity.py [--trace azure_chat] [--tasks 500] [--load 0.75] [--reps 2]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import strategies
from common import command, load_average, machine, machine_line, pct, quiet, table, verdict, write_section
from suite import scaled

from altlas_dask.cli.replay import find_trace
from altlas_dask.config import load_config
from altlas_dask.simulation.trace import TraceTask, read_trace

FIDELITY = strategies.FIDELITY


def window(trace: str, n: int, load: float) -> list[strategies.Arrival]:
    """The first ``n`` requests of ``trace``, scaled to ``load``, as the bench's arrivals (from t = 0)."""
    tasks = [t for t in read_trace(find_trace(trace)) if isinstance(t, TraceTask)][:n]
    fits_small = min(g["memory_mb"] for g in strategies.POOL) * 0.9
    tasks = scaled(tasks, load, strategies.TOTAL_GFLOPS)
    t0 = min(t.t for t in tasks)
    return [
        strategies.Arrival(
            t.t - t0, "A100 only" if t.memory_mb > fits_small else "any GPU", t.work_gflop, t.memory_mb,
            t.task_type, t.cost,
        )
        for t in sorted(tasks, key=lambda t: t.t)
    ]  # fmt: skip


def parts_ms(queue: list[float], run: list[float], ret: list[float]) -> str:
    return " / ".join(f"{statistics.fmean(v) * 1e3:.0f}" for v in (queue, run, ret))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", default="azure_chat")
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--load", type=float, default=0.75)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    quiet()
    info, load_start, started = machine(), load_average(), time.perf_counter()
    default = load_config(environ={}).routing().default_strategy
    seq = window(args.trace, args.tasks, args.load)
    print(f"{len(seq)} requests over {seq[-1].at:.1f} s, strategy {default}", flush=True)
    bench = strategies.Bench()
    loads = []
    try:
        runs = []
        for _ in range(args.reps):
            runs.append(bench.run(default, seq))
            loads.append(float(load_average()))
    finally:
        try:
            bench.close()
        except TimeoutError:  # a starved machine may not stop the workers in time; the runs are measured
            print("the cluster did not close in time", flush=True)
    latency = load_config(environ={}).simulation.latency
    # the Dask path as measured: a typical task's submit -> start and end -> callback on the cluster
    measured = {
        "dispatch_s": statistics.median(pct(r["queue"], 50) for r in runs) - latency.submit_s,
        "report_s": statistics.median(pct(r["ret"], 50) for r in runs) - latency.notify_s,
    }
    replays = {"replay, simulation.latency": strategies.replayed(seq, default)[0]}
    label = "replay, the path as measured (" + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in measured.items()) + ")"
    overrides = [f"simulation.latency.{k}={max(v, 0.0):.6f}" for k, v in measured.items()]
    replays[label] = strategies.replayed(seq, default, *overrides)[0]
    real = {q: statistics.median(pct(r["lat"], q) for r in runs) for q in (50, 95)}
    rows = [["cluster (median of runs)", f"{real[50]:.3f}", f"{real[95]:.3f}", "-", "-", "-"]]
    for name, done in replays.items():
        lat = [o.done - o.task.t for o in done]
        sim = {q: pct(lat, q) for q in (50, 95)}
        diff = {q: sim[q] / real[q] - 1 for q in (50, 95)}
        ok = all(abs(d) <= FIDELITY for d in diff.values())
        rows.append([name, f"{sim[50]:.3f}", f"{sim[95]:.3f}", f"{diff[50]:+.1%}", f"{diff[95]:+.1%}", verdict(ok)])
    runs_text = "; ".join(f"p50 {pct(r['lat'], 50):.3f} s, p95 {pct(r['lat'], 95):.3f} s" for r in runs)
    cluster_parts = parts_ms(*([v for r in runs for v in r[k]] for k in ("queue", "run", "ret")))
    done = replays["replay, simulation.latency"]
    replay_parts = parts_ms(
        [o.started - o.task.t for o in done], [o.ended - o.started for o in done], [o.done - o.ended for o in done]
    )
    failed = sum(r["failed"] for r in runs)
    body = "\n".join([
        "## Fidelity on the cluster: a real-trace window, cluster vs replay (issue 23 item 6)",
        "",
        f"Command: `{command('fidelity.py')}`  ",
        f"Machine: {machine_line(info)}  ",
        f"Load average (1 min) at start {load_start}, after each run {', '.join(f'{v:.2f}' for v in loads)}; "
        f"wall time {time.perf_counter() - started:.0f} s",
        "",
        f"{__doc__.split(chr(10) + chr(10))[1]}",
        "",
        f"Window: the first {len(seq)} requests of `{args.trace}` at {args.load:.0%} load ({seq[-1].at:.1f} s of "
        f"arrivals), strategy `{default}` (the default); {failed} failed on the cluster, "
        f"{len(seq) - len(done)} in the replay.",
        "",
        table(["", "p50 s", "p95 s", "p50 vs cluster", "p95 vs cluster", f"both within {FIDELITY:.0%}"], rows),
        "",
        f"Cluster runs: {runs_text}. Path parts, mean ms, queue / run / return: cluster {cluster_parts}; "
        f"replay with simulation.latency {replay_parts}. *The path as measured*: the replay's `dispatch_s` and "
        "`report_s` set from the cluster's median submit -> start and end -> callback (less `submit_s` and "
        "`notify_s`), so the gap it leaves is the part the measured dispatch latency does not explain.",
    ])  # fmt: skip
    print(body)
    write_section("fidelity", body)


if __name__ == "__main__":
    main()
