"""Task status, listing and cancellation (seed 004 sections 3.3, 3.4) and generic routed jobs (seed 001 6.3.1-2).

A task id is the Dask key. A user sees and cancels only their own tasks; another user's task answers
404, exactly like an unknown id, so task ids do not leak between users. Admin keys see every task.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request

from altlas_dask.api import callbacks
from altlas_dask.api.deps import GatewayDep, PrincipalDep
from altlas_dask.api.errors import ApiError
from altlas_dask.api.gateway import Gateway
from altlas_dask.api.registry import TaskEntry, item_id, route_key
from altlas_dask.api.schemas import CancelRequest, PayloadError, RouteRequest, check_payload
from altlas_dask.api.task_state import item_state, router_api_status, shape_result
from altlas_dask.client.workloads import WORKLOADS
from altlas_dask.model import MODEL_MEMORY_MB
from altlas_dask.options import GpuOptionsError
from altlas_dask.protocol import API_STATUS, STATUSES_FOR_API

router = APIRouter(tags=["tasks"])


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


WaitQuery = Query(
    0.0, ge=0.0, le=60.0, description="long poll: answer as soon as the task finishes, at most this many seconds"
)


async def settle_task(gateway: Gateway, task_id: str, user: str, is_admin: bool, wait: float) -> None:
    """Long poll on a task this gateway submitted (a batch item waits on its chunk); others answer at once."""
    if wait <= 0:
        return
    registry = gateway.registry
    item = registry.item(task_id)
    if item is not None and item[1] in item[0].meta.get("cancelled", {}):
        return  # a request cancelled alone is final at once
    entry = item[0] if item is not None else registry.tasks.get(task_id) or registry.tasks.get(route_key(task_id, user))
    if entry is not None and (is_admin or entry.user == user):
        await registry.settle([entry], wait)


@router.get("/task/{task_id}", summary="A task's status and, when completed, its result")
async def get_task(task_id: str, who: PrincipalDep, gateway: GatewayDep, wait: float = WaitQuery) -> dict[str, Any]:
    """With ``wait`` > 0: returns as soon as the task finishes (or after ``wait`` seconds, as it stands then)."""
    await settle_task(gateway, task_id, who.user, who.is_admin, wait)
    return await gateway.states.describe(task_id, who.user, who.is_admin)


@router.get("/tasks/{task_id}", summary="Alias of GET /task/{task_id}")
async def get_task_alias(
    task_id: str, who: PrincipalDep, gateway: GatewayDep, wait: float = WaitQuery
) -> dict[str, Any]:
    await settle_task(gateway, task_id, who.user, who.is_admin, wait)
    return await gateway.states.describe(task_id, who.user, who.is_admin)


@router.get("/tasks", summary="Your tasks, newest first; admins: everyone's")
async def list_tasks(
    who: PrincipalDep,
    gateway: GatewayDep,
    status: str | None = Query(None, description="queued, running, completed, failed, cancelled, rejected"),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=1_000_000),
    user: str | None = Query(None, max_length=128, description="admins: only this user's tasks"),
    results: bool = Query(True, description="include the results the gateway still holds"),
) -> dict[str, Any]:
    if status is not None and status not in STATUSES_FOR_API:
        raise ApiError(400, f"status: must be one of {', '.join(STATUSES_FOR_API)} (got {status!r})")
    if user is not None and user != who.user and not who.is_admin:
        raise ApiError(403, f"user {who.user!r} may not list the tasks of {user!r}")
    link = gateway.link
    router = link.router(who.user, who.is_admin)
    user = user if who.is_admin else who.user
    rows: list[dict[str, Any]] = []
    total = 0
    for router_status in STATUSES_FOR_API[status] if status else (None,):
        status_name = router_status and str(router_status)
        answer = await link.ask(router.tasks(user=user, status=status_name, limit=offset + limit, offset=0))
        rows.extend(answer["tasks"])
        total += answer["total"]
    rows.sort(key=lambda r: r["submitted"], reverse=True)
    listed: list[dict[str, Any]] = []
    for r in rows[: offset + limit]:
        item: dict[str, Any] = {
            "task_id": r["key"],
            "gpu_id": r.get("gpu"),
            "status": router_api_status(r["status"]),
            "user": r["user"],
            "task_type": r.get("task_type"),
            "priority": r.get("priority"),
            "submitted": iso(r.get("submitted")),
            "finished": iso(r.get("finished_at")),
            "key": r["key"],
        }
        if r.get("error"):
            item["error"] = r["error"]
        entry = gateway.registry.tasks.get(r["key"])
        if entry is not None and entry.kind == "predict" and entry.items:  # a batch of requests: one row each
            requests = request_rows(item, entry)
            total += len(requests) - 1
            listed.extend(requests)
        else:
            listed.append(item)
    if status is not None:  # a request cancelled alone has left its batch's status
        wanted = {API_STATUS[s] for s in STATUSES_FOR_API[status]}
        listed = [t for t in listed if t["status"] in wanted]
    page = listed[offset : offset + limit]
    keys = {t["key"] for t in page}
    tasks = gateway.registry.tasks
    batches = {t["chunk_id"]: tasks[t["chunk_id"]] for t in page if "index" in t}  # before any await
    needed = results or bool(batches)  # a request's status may hang on its own outcome
    values = await gateway.states.results([tasks[k] for k in keys if k in tasks]) if needed else {}
    for t in page:
        value = values.get(t.pop("key"))
        if "index" in t:  # one request of a batch: its own result, or the error it failed with alone
            index = t.pop("index")
            own = item_state(batches[t["chunk_id"]], index, value[index] if isinstance(value, list) else None)
            if "status" in own:
                t.update(own)
            elif "result" in own and results and t["status"] == "completed":
                t["result"] = own["result"]
        elif value is not None and results:
            t["result"] = shape_result(value)
    return {"tasks": {t["task_id"]: t for t in page}, "total": total, "limit": limit, "offset": offset}


def request_rows(row: dict[str, Any], entry: TaskEntry) -> list[dict[str, Any]]:
    """The listing's rows of a gateway batch task (dynamic batching): one per request, under its own task id
    (``index`` marks it until its result is filled in), ``cancelled`` when it was cancelled alone."""
    out = []
    for index in range((entry.items or (0, 1))[1]):
        item = {**row, "task_id": item_id(entry.task_id, index), "chunk_id": entry.task_id, "index": index}
        item.update(item_state(entry, index, None))  # cancelled alone, known before its result is
        out.append(item)
    return out


@router.delete("/tasks/{task_id}", summary="Cancel one of your tasks (queued or running)")
async def delete_task(
    task_id: str, who: PrincipalDep, gateway: GatewayDep, body: CancelRequest | None = None
) -> dict[str, Any]:
    """409 if the task already finished, 404 if it is unknown or another user's."""
    reason = body.reason if body else ""
    item = gateway.registry.item(task_id)
    if item is not None and (who.is_admin or item[0].user == who.user):
        return await gateway.submission.cancel_item(task_id, *item, who.user, reason)
    key, _, _ = await gateway.states.lookup(task_id, who.user, who.is_admin)
    return await gateway.submission.cancel(key, who.user, who.is_admin, reason)


# -- generic routed jobs (seed 001 section 6.3.1 / 6.3.2) -------------------------------------------------


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
