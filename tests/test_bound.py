"""The p95 lower bound (altlas_dask.simulation.bound): exact on one server, never above a real replay's p95."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from altlas_dask.cli.replay import find_trace
from altlas_dask.config import SimulatedGpuSpec, load_config
from altlas_dask.simulation.bound import fewest_late, p95_lower_bound
from altlas_dask.simulation.engine import Timing, replay
from altlas_dask.simulation.trace import TraceTask, read_trace


def feasible(release: list[float], seconds: list[float], window: float) -> bool:
    """Every job meets ``release + window`` on one preemptive server iff no interval [r_a, d_b] holds more
    work that must run inside it than its length (the demand criterion)."""
    deadlines = [r + window for r in release]
    for a, b in itertools.product(release, deadlines):
        inside = sum(p for r, d, p in zip(release, deadlines, seconds, strict=True) if r >= a and d <= b)
        if inside > max(b - a, 0.0) + 1e-9:
            return False
    return True


def brute_fewest_late(release: list[float], seconds: list[float], window: float) -> int:
    n = len(release)
    for late in range(n + 1):
        for dropped in itertools.combinations(range(n), late):
            kept = [i for i in range(n) if i not in dropped]
            if feasible([release[i] for i in kept], [seconds[i] for i in kept], window):
                return late
    return n


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 12), st.integers(1, 8)), min_size=1, max_size=7),
    st.integers(1, 14),
)
def test_fewest_late_is_the_optimum(jobs, window):
    jobs = sorted(jobs)
    release, seconds = [float(r) for r, _ in jobs], [float(p) for _, p in jobs]
    assert fewest_late(release, seconds, float(window)) == brute_fewest_late(release, seconds, float(window))


def test_a_lone_large_task_bounds_p95_by_its_own_run_time():
    gpus = [SimulatedGpuSpec(name="big", memory_mb=1000, speed_gflops=100, count=1)] * 2
    tasks = [TraceTask(t=10.0 * i, id=f"t{i}", work_gflop=500, memory_mb=10) for i in range(20)]
    bound = p95_lower_bound(tasks, gpus, fixed_s=0.25)
    assert 5.25 - 1e-3 <= bound <= 5.25  # 500 GFLOP / 100 GFLOP/s + the fixed path; no queue at this rate


def test_no_strategy_beats_the_bound_on_a_replayed_trace():
    cfg = load_config(overrides=["accounting.database=:memory:"], environ={})
    tasks = [t for t in read_trace(find_trace("heterogeneous")) if isinstance(t, TraceTask)]
    timing = Timing.from_config(cfg)
    fixed = timing.submit_s + timing.dispatch_s + timing.report_s + timing.notify_s
    bound = p95_lower_bound(tasks, cfg.simulation.expanded(), fixed)
    for strategy in ("round_robin", "earliest_finish"):
        result = replay(cfg, tasks, strategy)
        latencies = [o.done - o.task.t for o in result.outcomes if o.status == "completed"]
        assert len(latencies) == len(tasks)
        assert bound <= float(np.percentile(latencies, 95)), strategy
    assert bound > fixed  # it says something beyond the fixed path
