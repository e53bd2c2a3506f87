"""Admin endpoints (seed 001 section 6.3.6): admin API keys only (403 for others)."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter

from altlas_dask.api.deps import AdminDep, GatewayDep
from altlas_dask.api.errors import ApiError
from altlas_dask.api.routes.predict import cancel_batch
from altlas_dask.api.schemas import CancelRequest, MaintenanceRequest, QuotaUpdate, RestartRequest
from altlas_dask.config import USER_NAME_PATTERN
from altlas_dask.gpus.state import GpuState

router = APIRouter(prefix="/admin", tags=["admin"])
RESTART_TIMEOUT = 60.0


@router.post("/gpu/{gpu_id}/maintenance", summary="Put a GPU in maintenance: no new work, running work finishes")
async def maintenance(
    gpu_id: str, who: AdminDep, gateway: GatewayDep, body: MaintenanceRequest | None = None
) -> dict[str, Any]:
    body = body or MaintenanceRequest()
    g = await gateway.gpus.one(gpu_id)
    reason = body.reason or f"maintenance by {who.user}"
    link = gateway.link
    answer = await link.ask(link.router(who.user, True).drain(g["id"], reason))
    gateway.gpus.invalidate()
    end = None
    if body.estimated_duration is not None:
        end = datetime.fromtimestamp(time.time() + body.estimated_duration * 60, UTC).isoformat(timespec="seconds")
    return {
        "gpu_id": g["id"],
        "status": "maintenance",
        "reason": body.reason,
        "estimated_end": end.replace("+00:00", "Z") if end else None,
        "running_tasks": answer.get("running", 0),
    }


@router.delete("/gpu/{gpu_id}/maintenance", summary="End maintenance: the GPU takes new work again")
async def end_maintenance(gpu_id: str, who: AdminDep, gateway: GatewayDep) -> dict[str, Any]:
    g = await gateway.gpus.one(gpu_id)
    await gateway.link.ask(gateway.link.router(who.user, True).enable(g["id"]))
    gateway.gpus.invalidate()
    return {"gpu_id": g["id"], "status": "active"}


@router.post("/gpu/{gpu_id}/restart", summary="Restart the GPU's worker process")
async def restart(
    gpu_id: str, who: AdminDep, gateway: GatewayDep, body: RestartRequest | None = None
) -> dict[str, Any]:
    """Without ``force`` a GPU with running tasks answers 409 (drain it first); with ``force`` its tasks
    are placed again on other GPUs (the router's failover) while the worker restarts."""
    body = body or RestartRequest()
    g = await gateway.gpus.one(gpu_id)
    if g["active_requests"] and not body.force:
        raise ApiError(
            409,
            f"GPU {g['id']} has {g['active_requests']} running task(s): put it in maintenance and wait, "
            'or pass {"force": true}',
        )
    worker = g.get("worker")
    if not worker:
        raise ApiError(409, f"GPU {g['id']} has no worker to restart")
    started = time.monotonic()
    try:
        await gateway.link.client.restart_workers([worker], timeout=RESTART_TIMEOUT)
    except Exception as exc:  # the GPU keeps its id and maintenance state: it is back when its worker reports
        code = 504 if isinstance(exc, TimeoutError) else 502
        raise ApiError(
            code,
            f"restarting the worker of GPU {g['id']} failed ({type(exc).__name__}: {exc}); the router keeps GPU "
            f"{g['id']} (same id, same maintenance state) and takes it back when its worker reports again",
        ) from None
    deadline = started + RESTART_TIMEOUT
    while True:  # until the router sees the GPU again, on its new worker (its first heartbeat)
        gateway.gpus.invalidate()
        back = next((x for x in await gateway.gpus.read(max_age=0) if x["id"] == g["id"]), None)
        if back is not None and (back.get("worker") != worker or time.monotonic() - started > 5):
            break
        if time.monotonic() > deadline:
            raise ApiError(504, f"GPU {g['id']} did not come back within {RESTART_TIMEOUT:g}s")
        await asyncio.sleep(0.2)
    return {
        "gpu_id": g["id"],
        "status": "restarted",
        "old_worker": worker,
        "worker": back.get("worker"),
        "seconds": round(time.monotonic() - started, 2),
        "gpu": GpuState.from_dict(back).to_api(),
    }


@router.delete("/request/{request_id}", summary="Cancel any request (task or batch) of any user")
async def cancel_request(
    request_id: str, who: AdminDep, gateway: GatewayDep, body: CancelRequest | None = None
) -> dict[str, Any]:
    reason = body.reason if body else ""
    batch = gateway.registry.batches.get(request_id)
    if batch is not None:
        return {**await cancel_batch(gateway, batch, who.user, True, reason), "status": "cancelled"}
    return {**await gateway.submission.cancel(request_id, who.user, True, reason), "reason": reason}


@router.put("/user/{user_id}/quota", summary="Change a user's limits (kept across restarts)")
async def set_quota(user_id: str, body: QuotaUpdate, who: AdminDep, gateway: GatewayDep) -> dict[str, Any]:
    if not re.match(USER_NAME_PATTERN, user_id):
        raise ApiError(400, f"user_id: {user_id[:40]!r} is not a valid user name (letters, digits, _ . @ -)")
    limits = body.limits()
    if not limits:
        raise ApiError(400, "body: give at least one limit (e.g. concurrent_requests_limit, gpu_time_limit)")
    link = gateway.link
    router = link.router(who.user, True)
    answer = await link.ask(router.set_quota(user_id, limits))
    return {**answer, "quota": await link.ask(router.quota(user_id))}
