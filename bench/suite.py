"""The strategy suite: every strategy on every trace at 60, 75 and 90% load, replayed in virtual time.

Traces (altlas_dask/simulation/traces, docs/replay.md): three windows of public traces of real LLM inference
traffic, ``azure_chat`` and ``azure_code`` (Azure LLM inference trace 2023) and ``mooncake_conversation``
(Mooncake FAST'25 conversation trace, shared prompt prefixes), beside the generated ``heterogeneous`` and
``bursts``. Load: each trace's arrival times are scaled (the recorded pattern kept) so that its work offers
that share of the pool's GFLOP/s. Pool: cluster.yaml's, 2 x A100 80GB model + 2 x T4 16GB model. The
replay is simulated time: the figures are deterministic, machine load does not touch them.

Verdict per (trace, load), issue 23: the default's p95 at most 1.05 x the best of round_robin, least_loaded
and hybrid; at least 25% below round_robin's; no task class's p95 above 2 x its p95 under least_loaded (class:
its task type, and whether it only fits an A100); GPU utilization at most 2 points below least_loaded's.

Run: ``.venv/bin/python bench/strategies.py --suite [--traces NAME ...] [--loads 0.6 0.75 0.9]``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from common import table, verdict

from altlas_dask.cli.replay import find_trace
from altlas_dask.config import load_config
from altlas_dask.simulation.bound import p95_lower_bound
from altlas_dask.simulation.engine import Timing, replay
from altlas_dask.simulation.trace import TraceTask, read_trace

TRACES = ("azure_chat", "azure_code", "mooncake_conversation", "heterogeneous", "bursts")
LOADS = (0.6, 0.75, 0.9)
STRATEGIES = ("round_robin", "least_loaded", "memory_optimized", "random", "hybrid", "earliest_finish")
BASELINES = ("round_robin", "least_loaded", "hybrid")
VS_BEST, VS_ROUND_ROBIN, CLASS_FACTOR, UTIL_POINTS = 1.05, 0.25, 2.0, 0.02


@dataclass
class Run:
    p50: float
    p95: float
    p99: float
    util: float
    failed: int
    by_class: dict[str, float]
    hit_rate: float | None


def config(*overrides: str):
    return load_config(overrides=["accounting.database=:memory:", *overrides], environ={})


def scaled(tasks: list[TraceTask], load: float, pool_gflops: float) -> list[TraceTask]:
    """The trace with its times scaled so that its work offers ``load`` of the pool (its pattern kept)."""
    span = max(t.t for t in tasks) - min(t.t for t in tasks)
    offered = sum(t.work_gflop for t in tasks) / span
    factor = offered / (load * pool_gflops)
    return [t.model_copy(update={"t": round(t.t * factor, 6)}) for t in tasks]


def run_one(tasks: list[TraceTask], strategy: str, cfg, fits_small: float) -> Run:
    result = replay(cfg, tasks, strategy)
    done = [o for o in result.outcomes if o.status == "completed"]
    lat = [o.done - o.task.t for o in done]
    classes: dict[str, list[float]] = defaultdict(list)
    for o, v in zip(done, lat, strict=True):
        size = "A100 only" if o.task.memory_mb > fits_small else "any GPU"
        classes[f"{o.task.task_type}, {size}"].append(v)
    span = max(result.end - min(o.task.t for o in result.outcomes), 1e-9)
    busy = sum(g.busy_s for g in result.gpus)
    hits = result.counters.get("affinity_hits")
    keyed = sum(1 for t in tasks if t.affinity)
    return Run(
        *(float(np.percentile(lat, q)) for q in (50, 95, 99)),
        busy / (span * len(result.gpus)),
        len(result.outcomes) - len(done),
        {c: float(np.percentile(v, 95)) for c, v in classes.items()},
        hits / keyed if hits is not None and keyed else None,
    )


def suite(traces: Sequence[str], loads: Sequence[float], strategies: Sequence[str], *overrides: str) -> dict:
    cfg = config(*overrides)
    specs = cfg.simulation.expanded()
    pool = sum(g.speed_gflops for g in specs)
    fits_small = min(g.memory_mb for g in specs) * cfg.gpu.multi_gpu.memory_threshold
    default = cfg.routing().default_strategy
    names = list(dict.fromkeys([*strategies, default]))
    timing = Timing.from_config(cfg)
    fixed = timing.submit_s + timing.dispatch_s + timing.report_s + timing.notify_s
    out: dict = {}
    bounds: dict = {}
    for name in traces:
        tasks = [t for t in read_trace(find_trace(name)) if isinstance(t, TraceTask)]
        for load in loads:
            trace = scaled(tasks, load, pool)
            out[(name, load)] = {s: run_one(trace, s, cfg, fits_small) for s in names}
            bounds[(name, load)] = p95_lower_bound(trace, specs, fixed)
    return {"default": default, "strategies": names, "runs": out, "bounds": bounds}


def goals(runs: dict[str, Run], default: str, bound: float) -> tuple[bool, list[str]]:
    """Issue 23's four conditions for ``default`` on one (trace, load); the ones missed, in words. "25% below
    round_robin" is infeasible where ``bound`` (no strategy's p95 is lower) is above 75% of round_robin's."""
    me, ll, rr = runs[default], runs["least_loaded"], runs["round_robin"]
    best = min(runs[b].p95 for b in BASELINES)
    missed = []
    if me.p95 > VS_BEST * best:
        missed.append(f"p95 {me.p95 / best:.2f} x the best baseline")
    if me.p95 > (1 - VS_ROUND_ROBIN) * rr.p95:
        infeasible = bound > (1 - VS_ROUND_ROBIN) * rr.p95
        if not infeasible:
            missed.append(f"p95 {me.p95 / rr.p95 - 1:+.0%} vs round_robin")
    for c, v in me.by_class.items():
        if c in ll.by_class and v > CLASS_FACTOR * ll.by_class[c]:
            missed.append(f"class {c!r} p95 {v / ll.by_class[c]:.1f} x least_loaded's")
    if me.util < ll.util - UTIL_POINTS:
        missed.append(f"utilization {me.util:.0%} vs least_loaded {ll.util:.0%}")
    return not missed, missed


def report(result: dict) -> str:
    default, names = result["default"], result["strategies"]
    headers = [
        "trace", "load", *(f"{s} p95 s" for s in names), "no strategy below s", "round_robin / bound",
        "default's rank", "goals (issue 23)",
    ]  # fmt: skip
    rows, util_rows, met, infeasible = [], [], 0, 0
    for (trace, load), runs in result["runs"].items():
        ranked = sorted(names, key=lambda s: runs[s].p95)
        bound = result["bounds"][(trace, load)]
        ok, missed = goals(runs, default, bound)
        met += ok
        beyond = bound > (1 - VS_ROUND_ROBIN) * runs["round_robin"].p95
        infeasible += beyond
        rows.append([
            trace, f"{load:.0%}", *(f"{runs[s].p95:.2f}" for s in names), f"{bound:.2f}",
            f"{runs['round_robin'].p95 / bound:.2f}" + (" (25% below infeasible)" if beyond else ""),
            f"{ranked.index(default) + 1} of {len(names)}", verdict(ok) + ("" if ok else ": " + "; ".join(missed)),
        ])  # fmt: skip
        util_rows.append([trace, f"{load:.0%}", *(f"{runs[s].util:.0%} / {runs[s].p50:.2f}" for s in names)])
    total = len(result["runs"])
    return "\n\n".join([
        table(headers, rows),
        f"The default ({default}) meets all four goals on {met} of {total} trace x load cells. *No strategy below*: "
        "the p95 no strategy can beat on this pool (altlas_dask/simulation/bound.py); where it is above 75% of "
        "round_robin's p95, \"25% below round_robin\" is infeasible for every strategy and is not counted as "
        f"missed ({infeasible} of {total} cells).",
        "GPU utilization / p50 s:",
        table(["trace", "load", *names], util_rows),
    ])  # fmt: skip


def as_json(result: dict) -> str:
    return json.dumps(
        {f"{t}@{load}": {s: vars(r) for s, r in runs.items()} for (t, load), runs in result["runs"].items()},
        indent=1,
    )


def affinity(loads: Sequence[float], strategies: Sequence[str] = ("least_loaded", "earliest_finish")) -> str:
    """Hit rate and latency with and without gpu_options.affinity on the shared-prefix trace."""
    name = "mooncake_conversation"
    tasks = [t for t in read_trace(find_trace(name)) if isinstance(t, TraceTask)]
    rows = []
    for load in loads:
        for strategy in strategies:
            cells = []
            for factor in ("1.25", "0"):
                cfg = config(f"gpu.multi_gpu.affinity_load_factor={factor}")
                pool = sum(g.speed_gflops for g in cfg.simulation.expanded())
                run = run_one(scaled(tasks, load, pool), strategy, cfg, 0.9 * 16384)
                cells.append(run)
            on, off = cells
            rows.append([
                f"{load:.0%}", strategy, f"{on.hit_rate:.1%} / {off.hit_rate:.1%}", f"{on.p50:.2f} / {off.p50:.2f}",
                f"{on.p95:.2f} / {off.p95:.2f}", f"{on.p95 / off.p95 - 1:+.0%}",
            ])  # fmt: skip
    keyed = sum(1 for t in tasks if t.affinity_gflop > 0)
    return (
        f"Trace `{name}`: {len(tasks)} requests, {keyed} of them continue a conversation seen earlier in the window "
        f"(the most a router can hit: {keyed / len(tasks):.0%}); a hit skips the prefix's prefill "
        f"({sum(t.affinity_gflop for t in tasks) / sum(t.work_gflop for t in tasks):.0%} of the window's work).\n\n"
        + table(["load", "strategy", "hit rate with / without", "p50 s with / without", "p95 s with / without",
                 "p95 change"], rows)  # fmt: skip
    )
