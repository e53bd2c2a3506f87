"""GPUs (seed 004 section 3.5, seed 001 section 6.3.3), metrics (6.3.5) and quotas (6.3.4)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request

from altlas_dask.api import metrics
from altlas_dask.api.deps import AnyGatewayDep, GatewayDep, PrincipalDep
from altlas_dask.api.errors import ApiError
from altlas_dask.config import USER_NAME_PATTERN
from altlas_dask.gpus.state import GpuState

router = APIRouter(tags=["cluster"])


def gpu_json(g: dict[str, Any]) -> dict[str, Any]:
    """The one JSON shape of a GPU (``GpuState.to_api``: seed 004's fields and seed 001's)."""
    return GpuState.from_dict(g).to_api()


@router.get("/gpus", summary="Every GPU, each in the one GPU shape")
async def gpus(who: PrincipalDep, gateway: GatewayDep) -> dict[str, Any]:
    return {"gpus": [gpu_json(g) for g in await gateway.gpus.read(max_age=0)]}


@router.get("/gpus/{gpu_id}", summary="One GPU, in the one GPU shape")
async def gpu(gpu_id: str, who: PrincipalDep, gateway: GatewayDep) -> dict[str, Any]:
    return gpu_json(await gateway.gpus.one(gpu_id))


@router.get("/gpu/status", summary="Detailed GPU state")
async def gpu_status(who: PrincipalDep, gateway: GatewayDep) -> dict[str, Any]:
    states = [gpu_json(g) for g in await gateway.gpus.read(max_age=0)]
    return {"timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"), "gpus": states}


@router.get("/metrics", summary="System, GPU, model and user metrics")
async def get_metrics(
    request: Request,
    who: PrincipalDep,
    gateway: GatewayDep,
    window: float = Query(3600, gt=0, le=30 * 24 * 3600, description="seconds of finished work to summarise"),
) -> dict[str, Any]:
    """Non-admin keys see only their own entry under ``users``."""
    return await metrics.summary(
        gateway, request.app.state.http_stats, user=who.user, is_admin=who.is_admin, window_s=window
    )


@router.get("/user/{user_id}/quota", summary="A user's quotas and rate limits")
async def quota(user_id: str, who: PrincipalDep, gateway: GatewayDep) -> dict[str, Any]:
    """Your own quota; admins may read anyone's (403 otherwise)."""
    import re

    if not re.match(USER_NAME_PATTERN, user_id):
        raise ApiError(400, f"user_id: {user_id[:40]!r} is not a valid user name (letters, digits, _ . @ -)")
    if user_id != who.user and not who.is_admin:
        raise ApiError(403, f"user {who.user!r} may not read the quota of {user_id!r}")
    link = gateway.link
    return await link.ask(link.router(who.user, who.is_admin).quota(user_id))


@router.get(
    "/health", summary="Liveness: no key needed; 503 with the reason while the scheduler is away", tags=["meta"]
)
async def health(gateway: AnyGatewayDep) -> dict[str, Any]:
    link = gateway.link
    if not link.connected:
        link.check_available()  # raises the 503 with the reason and Retry-After
    return {
        "status": "ok",
        "scheduler": link.address,
        "uptime_s": round(time.time() - link.started, 1),
        "reconnects": link.reconnects,
    }
