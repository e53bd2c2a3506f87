"""The trace of what a real cluster ran, from the router's final task records (the accounting database).

A record has the task's user, priority, task type, memory and submission time, the GPU it ran on and
its GPU seconds; its work is estimated as GPU seconds x that GPU's speed (GFLOP/s). Records that never
ran (rejected, cancelled while waiting) have no measured work and are left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from altlas_dask.accounting.reports import submitted_records
from altlas_dask.config import AltlasConfig
from altlas_dask.simulation.trace import TraceTask


def gpu_speeds(config: AltlasConfig) -> dict[int, float]:
    """GFLOP/s per GPU id of the config's modelled pool (the speeds a record's GPU seconds are scaled by)."""
    return {i: spec.speed_gflops for i, spec in enumerate(config.simulation.expanded())}


def records_to_trace(rows: Iterable[Mapping[str, Any]], speeds: Mapping[int, float]) -> list[TraceTask]:
    """Trace lines for the records that ran, arrival times relative to the earliest submission."""
    ran = [r for r in rows if r.get("gpu") is not None and (r.get("gpu_seconds") or 0) > 0 and r.get("submitted")]
    if not ran:
        return []
    ran.sort(key=lambda r: (r["submitted"], r["key"]))
    t0 = ran[0]["submitted"]
    default_speed = max(speeds.values(), default=1000.0)
    return [
        TraceTask(
            t=round(r["submitted"] - t0, 6),
            id=str(r["key"]),
            user=r.get("user") or "anonymous",
            priority=r.get("priority") or 3,
            task_type=r.get("task_type") or "inference",
            memory_mb=r.get("memory_mb") or 0,
            work_gflop=round(r["gpu_seconds"] * speeds.get(r["gpu"], default_speed), 3),
        )
        for r in ran
    ]


def trace_from_database(
    path: str | Path, speeds: Mapping[int, float], since: float | None = None, until: float | None = None
) -> list[TraceTask]:
    """The trace of the tasks submitted in ``[since, until)`` (Unix seconds), read from the accounting database."""
    return records_to_trace(submitted_records(path, since, until), speeds)
