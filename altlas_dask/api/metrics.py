"""``GET /metrics``: the JSON summary of seed 001 section 6.3.5.

Finished work comes from the router's durable task records over a time window (``altlas_finished``: the router
reads its accounting database); live work (running, queued) from the router itself; GPU readings from the GPU
list; the gateway adds its own HTTP request counts and latencies. Response time = router submission to
completion (queue wait + run). "models" are task types (the label the router's Prometheus metrics use).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from altlas_dask.api.gateway import Gateway
from altlas_dask.protocol import API_STATUS

#: the router statuses the REST API reports as "queued" (held on the scheduler or waiting for a retry)
WAITING = tuple(status.value for status, api in API_STATUS.items() if api == "queued")


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


class HttpStats:
    """Counts and latencies of the gateway's own HTTP responses (the last ``size`` requests)."""

    def __init__(self, size: int = 20_000) -> None:
        self.latencies: deque[float] = deque(maxlen=size)
        self.by_status: dict[int, int] = {}
        self.total = 0

    def record(self, status: int, seconds: float) -> None:
        self.total += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.latencies.append(seconds)

    def summary(self) -> dict[str, Any]:
        values = sorted(self.latencies)
        return {
            "requests": self.total,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "latency_ms": {q: ms(percentile(values, p)) for q, p in (("p50", 50), ("p95", 95), ("p99", 99))},
        }


async def summary(gateway: Gateway, http: HttpStats, *, user: str, is_admin: bool, window_s: float) -> dict[str, Any]:
    now = time.time()
    link = gateway.link
    router, only = link.router(user, is_admin), None if is_admin else user
    finished = await link.ask(router.finished(window_s))  # from the accounting records
    gpus = await gateway.gpus.read(max_age=0)
    # live work: rows of running tasks (per user and model); queued ones are only counted (cheaply)
    active: list[dict[str, Any]] = []
    for router_status in ("placed", "running"):
        answer = await link.ask(router.tasks(user=only, status=router_status, limit=10_000))
        active.extend(answer["tasks"])
    if is_admin:
        tracked = (await link.ask(router.status()))["tracked"]
        queued_count = sum(tracked.get(status, 0) for status in WAITING)
    else:
        queued_count = 0
        for router_status in WAITING:
            queued_count += (await link.ask(router.tasks(user=only, status=router_status, limit=0)))["total"]

    counts = finished["status"]
    done = sum(counts.values())
    completed, failed = counts.get("completed", 0), counts.get("failed", 0)
    durations = finished["durations"]
    system = {
        "total_gpus": len(gpus),
        "active_gpus": sum(1 for g in gpus if g["status"] == "active"),
        "total_requests": done + len(active) + queued_count,
        "active_requests": len(active),
        "queued_requests": queued_count,
        "completed_requests": completed,
        "failed_requests": failed,
        "cancelled_requests": counts.get("cancelled", 0),
        "rejected_requests": counts.get("rejected", 0),
        "average_response_time": ms(sum(durations) / len(durations)) if durations else None,
        "p95_response_time": ms(percentile(durations, 95)),
        "p99_response_time": ms(percentile(durations, 99)),
        "success_rate": round(100 * completed / done, 2) if done else None,
    }
    per_gpu = {row[0]: row for row in finished["gpus"]}
    gpu_out = {}
    for g in gpus:
        row = per_gpu.get(g["id"])
        gpu_out[f"gpu_{g['id']}"] = {
            "name": g["name"],
            "status": g["status"],
            "memory_utilization": round(100 * g["memory_used_mb"] / g["memory_total_mb"], 2)
            if g["memory_total_mb"]
            else 0.0,
            "compute_utilization": g["utilization_gpu"],
            "temperature": g["temperature_c"],
            "power_usage": g["power_usage_w"],
            "active_requests": g["active_requests"],
            "queued_requests": g["queued_requests"],
            "average_response_time": ms(row[2]) if row else None,
            "throughput": round(row[1] / window_s, 3) if row else 0.0,
        }
    models: dict[str, Any] = {}
    for task_type, total, ok, avg, memory in finished["models"]:
        models[task_type] = {
            "total_requests": total,
            "active_requests": 0,
            "average_response_time": ms(avg),
            "average_memory_usage": round(memory or 0, 1),
            "success_rate": round(100 * (ok or 0) / total, 2) if total else None,
        }
    for t in active:
        entry = models.setdefault(
            t["task_type"],
            {
                "total_requests": 0,
                "active_requests": 0,
                "average_response_time": None,
                "average_memory_usage": None,
                "success_rate": None,
            },
        )
        entry["active_requests"] += 1
    users: dict[str, Any] = {}
    for name, total, gpu_seconds, avg in finished["users"]:
        if is_admin or name == user:
            users[name] = {
                "total_requests": total,
                "active_requests": 0,
                "gpu_time_used": round((gpu_seconds or 0) / 60, 4),
                "average_response_time": ms(avg),
            }
    for t in active:
        if is_admin or t["user"] == user:
            users.setdefault(
                t["user"],
                {"total_requests": 0, "active_requests": 0, "gpu_time_used": 0.0, "average_response_time": None},
            )["active_requests"] += 1
    return {
        "timestamp": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "window_s": window_s,
        "system": system,
        "gpus": gpu_out,
        "models": models,
        "users": users,
        "gateway": {**http.summary(), "dynamic_batching": batching_summary(gateway)},
    }


def batching_summary(gateway: Gateway) -> dict[str, Any] | None:
    """How the gateway's request batcher grouped ``POST /predict`` requests since it started (None when off)."""
    batcher = gateway.request_batcher
    if batcher is None:
        return None
    mean = batcher.items / batcher.batches if batcher.batches else None
    return {
        "batches": batcher.batches,
        "requests": batcher.items,
        "mean_batch_size": None if mean is None else round(mean, 2),
        "max_batch_size": batcher.max_batch_size,
        "in_flight": batcher.in_flight,
    }
