"""A lower bound on a trace's p95 latency that holds for every strategy (issue 23 item 5).

Two relaxations of the replay's pool (:mod:`.model`), each a single preemptive server that any real
schedule can be mapped onto with the same completion times (give each task, at each moment, the rate it
gets on its GPU in the real schedule):

* the whole pool as one server of the summed speed, every task on it;
* the GPUs a large task fits on (its memory over every smaller GPU's) as one server of their summed speed,
  only the tasks that fit nowhere else on it.

In both, a task also needs at least its work over the fastest GPU it fits, and the fixed Dask path around
the device (``submit_s + dispatch_s + report_s + notify_s``). Its work is the trace's ``work_gflop``, less
``affinity_gflop`` when an earlier task named the same affinity (a hit is possible).

For a latency ``x`` every task has the deadline ``arrival + x``: release and deadline orders agree, so the
fewest tasks that must end later than that on one server is Kise, Ibaraki and Mine's greedy (Operations
Research 26(1), 1978): take the tasks in arrival order, and when the newest misses its deadline drop the
one whose removal ends the remaining work soonest. If at least ``n - floor(0.95 (n - 1))`` tasks must be
late at ``x``, every schedule's p95 (numpy's linear interpolation) is above ``x``; a bisection on ``x``
gives the bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from altlas_dask.config import SimulatedGpuSpec
from altlas_dask.simulation.trace import TraceTask


@dataclass(frozen=True)
class Job:
    """A task as the relaxations see it: release (s), least work (GFLOP), memory (MB)."""

    release: float
    work: float
    memory_mb: int


def fewest_late(release: Sequence[float], seconds: Sequence[float], window: float) -> int:
    """Fewest jobs that end after ``release + window`` on one preemptive server (jobs in release order,
    ``seconds`` of service each)."""
    late = 0
    kept_r: list[float] = []  # the current busy period's kept jobs, in release order
    kept_p: list[float] = []
    end = -math.inf
    for r, p in zip(release, seconds, strict=True):
        if r >= end:  # the server is idle at r: earlier jobs cannot help any later one
            kept_r, kept_p, end = [], [], r
        kept_r.append(r)
        kept_p.append(p)
        end += p
        if end <= r + window + 1e-12:
            continue
        late += 1
        rs, ps = np.asarray(kept_r), np.asarray(kept_p)
        ends = rs + np.cumsum(ps[::-1])[::-1]  # job i's set ends no sooner than r_i + the work from i on
        before = np.maximum.accumulate(np.concatenate(([-math.inf], ends[:-1])))
        after = np.maximum.accumulate(np.concatenate((ends[1:], [-math.inf]))[::-1])[::-1]
        without = np.maximum(before - ps, after)  # the end of the kept work if job k is dropped
        k = int(np.argmin(without))
        end = float(without[k])
        del kept_r[k], kept_p[k]
    return late


def jobs(tasks: Sequence[TraceTask]) -> list[Job]:
    """The trace's tasks in arrival order, each with its least work (an affinity hit where one is possible)."""
    seen: set[str] = set()
    out = []
    for t in sorted(tasks, key=lambda t: t.t):
        work = t.work_gflop
        if t.affinity is not None:
            if t.affinity in seen:
                work = max(work - t.affinity_gflop, 0.0)
            seen.add(t.affinity)
        out.append(Job(t.t, work, t.memory_mb))
    return out


def must_be_late(jobs: Sequence[Job], gpus: Sequence[SimulatedGpuSpec], window: float) -> int:
    """Fewest jobs whose time from release to the device's end exceeds ``window``, on every schedule."""
    fastest = [max((g.speed_gflops for g in gpus if j.memory_mb <= g.memory_mb), default=0.0) for j in jobs]
    alone = [fast <= 0 or j.work / fast > window for j, fast in zip(jobs, fastest, strict=True)]
    best = _late_on(jobs, alone, [True] * len(jobs), sum(g.speed_gflops for g in gpus), window)
    for size in sorted({g.memory_mb for g in gpus})[:-1]:  # tasks larger than ``size`` fit only the GPUs above
        large = [j.memory_mb > size for j in jobs]
        speed = sum(g.speed_gflops for g in gpus if g.memory_mb > size)
        others = sum(a and not big for a, big in zip(alone, large, strict=True))
        best = max(best, others + _late_on(jobs, alone, large, speed, window))
    return best


def _late_on(jobs: Sequence[Job], alone: list[bool], chosen: list[bool], speed: float, window: float) -> int:
    """Late among the ``chosen`` jobs on one server of ``speed``: those too big alone, then the fewest of the rest."""
    rest = [j for j, a, c in zip(jobs, alone, chosen, strict=True) if c and not a]
    too_big = sum(a and c for a, c in zip(alone, chosen, strict=True))
    return too_big + fewest_late([j.release for j in rest], [j.work / speed for j in rest], window)


def p95_lower_bound(
    tasks: Sequence[TraceTask], gpus: Sequence[SimulatedGpuSpec], fixed_s: float = 0.0, q: float = 95
) -> float:
    """A p95 latency (s, arrival -> result) that no strategy beats on this pool; ``fixed_s``: the Dask path's
    latency around the device (every task pays it, so it shifts arrival and deadline alike)."""
    js = jobs(tasks)
    n = len(js)
    needed = n - math.floor(q / 100 * (n - 1))  # this many above x puts numpy's percentile above x
    lo, hi = 0.0, 1.0
    while must_be_late(js, gpus, hi) >= needed:
        lo, hi = hi, hi * 2
    while hi - lo > 1e-4 * hi:
        mid = (lo + hi) / 2
        if must_be_late(js, gpus, mid) >= needed:
            lo = mid
        else:
            hi = mid
    return lo + fixed_s
