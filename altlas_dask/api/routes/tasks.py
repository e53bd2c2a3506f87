"""Task status, listing and cancellation (seed 004 sections 3.3, 3.4); routed jobs are in :mod:`.route`.

A task id is the Dask key. A user sees and cancels only their own tasks; another user's task answers
404, exactly like an unknown id, so task ids do not leak between users. Admin keys see every task.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query

from altlas_dask.api.deps import GatewayDep, PrincipalDep
from altlas_dask.api.errors import ApiError
from altlas_dask.api.gateway import Gateway
from altlas_dask.api.registry import TaskEntry, item_id, route_key
from altlas_dask.api.schemas import CancelRequest
from altlas_dask.api.task_state import item_state, router_api_status, shape_result
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
