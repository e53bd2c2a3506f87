"""What a replay measured, per strategy: the figures the ``replay`` command prints and writes as JSON."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

import numpy as np

from altlas_dask.simulation.engine import ReplayResult


def percentile(values: list[float], q: float) -> float | None:
    """numpy's linear percentile (the one bench/ uses); None for no values."""
    return float(np.percentile(values, q)) if values else None


def summarize(result: ReplayResult) -> dict[str, Any]:
    """Done/failed, latency percentiles, queue wait, throughput, GPU utilization, per-user GPU time and
    p95 latency per task type. Latency: arrival -> the client's callback; queue: arrival -> start on a worker."""
    done = [o for o in result.outcomes if o.status == "completed"]
    latency = [o.done - o.task.t for o in done]
    first = min((o.task.t for o in result.outcomes), default=0.0)
    span = max(result.end - first, 1e-9)
    busy = sum(g.busy_s for g in result.gpus)
    by_user: dict[str, float] = defaultdict(float)
    by_type: dict[str, list[float]] = defaultdict(list)
    for o in result.outcomes:
        by_user[o.task.user] += o.device_s
    for o, lat in zip(done, latency, strict=True):
        by_type[o.task.task_type].append(lat)
    failed: dict[str, int] = defaultdict(int)
    for o in result.outcomes:
        if o.status != "completed":
            failed[o.status] += 1
    return {
        "strategy": result.strategy,
        "tasks": len(result.outcomes),
        "done": len(done),
        "failed": sum(failed.values()),
        "failed_by_status": dict(sorted(failed.items())),
        "latency_s": {f"p{q}": _r(percentile(latency, q)) for q in (50, 95, 99)}
        | {"mean": _r(statistics.fmean(latency) if latency else None)},
        "queue_wait_mean_s": _r(statistics.fmean(o.started - o.task.t for o in done) if done else None),
        "throughput_per_s": _r(len(done) / span),
        "makespan_s": _r(span),
        "gpu_utilization": _r(busy / (span * len(result.gpus)) if result.gpus else 0.0),
        "gpu_busy_s": {str(g.index): _r(g.busy_s) for g in result.gpus},
        "user_gpu_s": {u: _r(s) for u, s in sorted(by_user.items())},
        "p95_by_task_type_s": {t: _r(percentile(v, 95)) for t, v in sorted(by_type.items())},
        "bytes_moved": round(result.bytes_moved),
        "events": result.events,
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
