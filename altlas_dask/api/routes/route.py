"""Generic routed jobs (seed 001 sections 6.3.1, 6.3.2): ``POST /route``, ``GET /route/{request_id}``, the workloads.

A ``request_id`` is the task's key in its user's namespace (``<request_id>@<user>``): no clash, no leak.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request

from altlas_dask.api import callbacks
from altlas_dask.api.deps import GatewayDep, PrincipalDep
from altlas_dask.api.errors import ApiError
from altlas_dask.api.gateway import Gateway
from altlas_dask.api.registry import TaskEntry, route_key
from altlas_dask.api.routes.tasks import WaitQuery, iso, settle_task
from altlas_dask.api.schemas import PayloadError, RouteRequest, check_payload
from altlas_dask.api.task_state import router_api_status
from altlas_dask.client.workloads import WORKLOADS
from altlas_dask.model import MODEL_MEMORY_MB
from altlas_dask.options import GpuOptionsError

router = APIRouter(tags=["tasks"])


@router.post("/route", summary="Route a job to a GPU")
async def route(body: RouteRequest, who: PrincipalDep, gateway: GatewayDep, request: Request) -> dict[str, Any]:
    """``model_id`` names a workload (``GET /api/v1/workloads`` lists them), ``payload`` holds its arguments.
    Answers once the router has placed the job (``accepted`` with ``assigned_gpu``) or queued it. With
    ``callback_url`` (a host in ``serving.callbacks.allowed_hosts``) the final record is POSTed there, signed."""
    if body.user_id is not None and body.user_id != who.user and not who.is_admin:
        raise ApiError(403, f"user_id: your API key acts as {who.user!r}; only admins route jobs for other users")
    callback_url = None
    if body.callback_url is not None:
        callback_url = callbacks.check_url(body.callback_url, gateway.config.serving.callbacks)
    workload = WORKLOADS.get(body.model_id)
    if workload is None:
        raise ApiError(
            400, f"model_id: unknown workload {body.model_id!r}; choose one of {', '.join(sorted(WORKLOADS))}"
        )
    try:
        kwargs = check_payload(workload.name, workload.defaults, body.payload)
    except PayloadError as exc:
        raise ApiError(400, str(exc)) from None
    raw = dict(body.gpu_options or {})
    given = body.model_fields_set
    for name, field, value in (("priority", "priority", body.priority), ("task_type", "type", body.type)):
        if field in given and value is not None:
            if name in raw and raw[name] != value:
                raise GpuOptionsError(f"invalid gpu_options.{name}: conflicts with the request's value {value!r}")
            raw[name] = value
    if body.user_id is not None:
        raw["user"] = body.user_id
    requirements = body.resource_requirements
    memory = requirements.memory if requirements and requirements.memory is not None else kwargs.get("memory_mb")
    if memory is None and workload.name == "generate":
        memory = MODEL_MEMORY_MB
    if memory is not None:
        raw.setdefault("memory_mb", memory)
    if body.timeout is not None:
        raw.setdefault("timeout", body.timeout / 1000)
    size = requirements.compute_units if requirements and requirements.compute_units else workload.cost_of(kwargs)
    if size is not None:
        raw.setdefault("cost", size)  # its size: compute_units as given, else from the workload's arguments
    options = await gateway.submission.options(raw, who.user, who.is_admin, workload.task_type)
    key = None
    if body.request_id is not None:  # the task's key is the id in its user's namespace: no clash, no leak
        key = route_key(body.request_id, options.user)
        if key in gateway.registry.tasks or await gateway.states.explain([key]):
            raise ApiError(409, f"request_id: {options.user!r} already has a request {body.request_id!r}")
    entry = gateway.submission.submit(
        workload.fn,
        kwargs,
        options,
        user=options.user,
        kind="route",
        workload=workload.name,
        key=key,
        meta={"model_id": workload.name},
    )
    info = (await gateway.submission.placed([entry])).get(entry.task_id)
    if callback_url is not None:
        token = request.headers.get("authorization", "").partition(" ")[2].strip()
        _start_callback(gateway, entry, body.request_id or entry.task_id, who.user, who.is_admin, callback_url, token)
    if body.wait > 0:
        await gateway.registry.settle([entry], body.wait)
        if entry.future is not None and entry.future.done():
            return await route_record(gateway, body.request_id or entry.task_id, who.user, who.is_admin)
    now = time.time()
    status = router_api_status(info.get("status")) if info else "queued"
    placed = status in ("running", "completed")
    expected = requirements.expected_duration if requirements else None
    gpu = info.get("gpu") if info else None
    # the router's estimates (queue ahead + learned durations; docs/rest-api.md), else what the request says
    start = (info or {}).get("estimated_start") or (now if placed else None)
    end = (info or {}).get("estimated_completion")
    if end is None and start is not None and expected is not None:
        end = start + expected / 1000
    return {
        "request_id": body.request_id or entry.task_id,
        "status": "accepted" if placed else "queued",
        "assigned_gpu": f"gpu_{gpu}" if placed and gpu is not None else None,
        "estimated_start_time": iso(start),
        "estimated_completion_time": iso(end),
        # the router's own 1-based position in its queue when it gives one, else the gateway's estimate
        "queue_position": None if placed else (info or {}).get("queue_position") or gateway.gpus.queued + 1,
        "message": (info or {}).get("waiting_reason")
        or (info or {}).get("reason")
        or "submitted; the router has not placed it yet",
    }


_CALLBACKS: set[asyncio.Task] = set()


def _start_callback(
    gateway: Gateway, entry: TaskEntry, request_id: str, user: str, is_admin: bool, url: str, token: str
) -> None:
    """Deliver the job's final record to ``url`` once it ends (signed with the key's secret; see callbacks)."""
    state = entry.meta["callback"] = {"url": url, "status": "pending", "attempts": 0}
    secret = callbacks.key_secret(token)
    settings = gateway.config.serving.callbacks

    async def run() -> None:
        await gateway.registry.settle([entry], 7 * 24 * 3600)
        await callbacks.deliver(url, lambda: route_record(gateway, request_id, user, is_admin), secret, settings, state)

    task = asyncio.create_task(run(), name=f"altlas-callback-{entry.task_id}")
    _CALLBACKS.add(task)
    task.add_done_callback(_CALLBACKS.discard)


@router.get("/route/{request_id}", summary="A routed job's status")
async def route_status(
    request_id: str, who: PrincipalDep, gateway: GatewayDep, wait: float = WaitQuery
) -> dict[str, Any]:
    await settle_task(gateway, request_id, who.user, who.is_admin, wait)
    return await route_record(gateway, request_id, who.user, who.is_admin)


async def route_record(gateway: Gateway, request_id: str, user: str, is_admin: bool) -> dict[str, Any]:
    """Seed 001 section 6.3.2: a routed job's record."""
    states = gateway.states
    key, entry, info = await states.lookup(request_id, user, is_admin, final=True)  # with its start and end times
    task = await states.describe_found(key, entry, info, result=True)
    info = info or {}
    start, end = info.get("placed_at"), info.get("finished_at")
    status = {"running": "processing"}.get(task["status"], task["status"])
    out = {
        "request_id": request_id,
        "user_id": task.get("user") or info.get("user"),
        "model_id": entry.workload if entry else request_id.split("-", 1)[0],
        "status": status,
        "assigned_gpu": f"gpu_{task['gpu_id']}" if task.get("gpu_id") is not None else None,
        "start_time": iso(start),
        "completion_time": iso(end),
        "duration": round((end - start) * 1000) if start and end else None,
        "progress": 1.0 if task["status"] in ("completed", "failed", "cancelled") else 0.0,
        "result_url": f"/api/v1/task/{request_id}",
        "error": task.get("error"),
    }
    if "result" in task:
        out["result"] = task["result"]
    if entry is not None and "callback" in entry.meta:
        out["callback"] = dict(entry.meta["callback"])
    return out


@router.get("/workloads", summary="The workloads POST /route accepts as model_id")
async def workloads(who: PrincipalDep) -> dict[str, Any]:
    return {
        "workloads": [
            {"model_id": w.name, "task_type": w.task_type, "description": w.description, "defaults": w.defaults}
            for w in WORKLOADS.values()
        ]
    }
