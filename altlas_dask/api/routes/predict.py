"""Text generation: ``POST /predict``, ``POST /batch_predict`` and the batches (seed 004 sections 3.1, 3.2)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Query

from altlas_dask.api.deps import GatewayDep, PrincipalDep
from altlas_dask.api.gateway import Gateway
from altlas_dask.api.registry import BatchEntry, TaskEntry, item_id, new_id
from altlas_dask.api.schemas import BatchPredictRequest, CancelRequest, PredictRequest
from altlas_dask.api.submission import generation_cost
from altlas_dask.api.task_state import item_state, item_value
from altlas_dask.client.workloads import get_workload
from altlas_dask.errors import RouterError
from altlas_dask.model import MODEL_MEMORY_MB, generate, generate_batch

router = APIRouter(tags=["predict"])
WORKLOAD = "generate"


async def _brief(
    gateway: Gateway, entry: TaskEntry, info: dict[str, Any] | None, task_id: str | None = None
) -> dict[str, Any]:
    state = await gateway.states.state(entry, info)
    return {"task_id": task_id or entry.task_id, "gpu_id": state["gpu_id"], "status": state["status"]}


@router.post("/predict", summary="Generate text from a prompt on a GPU")
async def predict(body: PredictRequest, who: PrincipalDep, gateway: GatewayDep) -> dict[str, Any]:
    """Submits the request as a ``generate`` task, or, with dynamic batching (``serving.batching.generate``), as
    one item of a batch task shared with the user's requests of the same moment (its own task id
    ``<batch task>.<index>``); answers ``{task_id, gpu_id, status}`` once the router has placed (or queued) it.
    With ``wait`` > 0 it waits up to that many seconds for the result and includes it."""
    task_type = get_workload(WORKLOAD).task_type
    submission = gateway.submission
    options = await submission.options(body.gpu_options, who.user, who.is_admin, task_type, MODEL_MEMORY_MB)
    kwargs = body.model_dump(include={"text", "max_length", "temperature", "seed"})
    if gateway.request_batcher is not None:
        group = (who.user, options, body.max_length)  # the key's user owns the batch task: never mixed
        entry, index = await gateway.request_batcher.submit(group, kwargs, (options, who.user))
        task_id = item_id(entry.task_id, index)
    else:
        options = options.model_copy(update={"cost": generation_cost(options, [kwargs])})
        entry = submission.submit(generate, kwargs, options, user=who.user, kind="predict", workload=WORKLOAD)
        task_id = entry.task_id
    if body.wait > 0 and entry.future is not None:  # the outcome tells everything: no placement look-up
        await gateway.registry.settle([entry], body.wait)
        if entry.future.done():
            await submission.refuse_rejected(entry, task_id, [entry.task_id])
            return await gateway.states.describe(task_id, who.user, who.is_admin)
    found = await submission.placed([entry])
    return await _brief(gateway, entry, found.get(entry.task_id), task_id)


async def _submit_batch(body: BatchPredictRequest, who: PrincipalDep, gateway: Gateway) -> dict[str, Any]:
    task_type = get_workload(WORKLOAD).task_type
    submission, registry = gateway.submission, gateway.registry
    options = await submission.options(body.gpu_options, who.user, who.is_admin, task_type, MODEL_MEMORY_MB)
    items = [item.model_dump() for item in body.batch]
    plan = await submission.chunk_plan(len(items), options)
    batch_id = new_id("batch")
    entries, start = [], 0
    for gpu, size in plan:
        chunk = items[start : start + size]
        update: dict[str, Any] = {"cost": generation_cost(options, chunk)}
        if gpu is not None:
            update["specific_gpu_id"] = gpu
        entries.append(
            submission.submit(
                generate_batch,
                {"items": chunk},
                options.model_copy(update=update),
                user=who.user,
                kind="batch",
                workload=WORKLOAD,
                batch_id=batch_id,
                items=(start, size),
            )
        )
        start += size
    batch = BatchEntry(batch_id, who.user, [e.task_id for e in entries], [n for _, n in plan], time.time())
    registry.remember_batch(batch)
    found = await submission.placed(entries)
    if body.wait > 0:
        await registry.settle(entries, body.wait)
    chunks = [
        {**await _brief(gateway, e, found.get(e.task_id)), "items": {"start": e.items[0], "count": e.items[1]}}
        for e in entries
    ]
    done = all(e.future is not None and e.future.done() for e in entries)
    values = await gateway.states.results(entries) if done else {}
    tasks = item_tasks(entries, chunks, values)
    status = batch_status(chunks) if done else submission_status(tasks)
    out = {"batch_id": batch_id, "status": status, "size": len(items), "tasks": tasks, "chunks": chunks}
    if done:
        out["results"] = batch_results(chunks, batch.sizes, values)
    return out


def item_tasks(entries: list[TaskEntry], chunks: list[dict[str, Any]], values: dict[str, Any]) -> list[dict[str, Any]]:
    """Seed 004 section 3.2.5: one task entry per input item, in input order. Its ``task_id`` (an item of its
    chunk, ``<chunk id>.<index>``) resolves with ``GET /task/{id}``; ``result`` once known."""
    tasks = []
    for entry, chunk in zip(entries, chunks, strict=True):
        start, count = entry.items or (0, 1)
        value = values.get(entry.task_id)
        for j in range(count):
            task: dict[str, Any] = {
                "task_id": item_id(entry.task_id, j),
                "gpu_id": chunk["gpu_id"],
                "status": chunk["status"],
                "chunk_id": entry.task_id,
                "item": start + j,
            }
            if chunk.get("error"):
                task["error"] = chunk["error"]
            if isinstance(value, list) and len(value) == count:
                task.update(item_state(entry, j, value[j]))  # its own result, or the error it failed with alone
            tasks.append(task)
    return tasks


def submission_status(tasks: list[dict[str, Any]]) -> str:
    """Seed 004 section 3.2.5: running, queued, mixed, all_distributed (every chunk running, over several
    GPUs) or all_queued (several chunks, none placed yet)."""
    statuses = {t["status"] for t in tasks}
    if statuses <= {"running", "completed"}:
        gpus = {t["gpu_id"] for t in tasks if t["gpu_id"] is not None}
        return "all_distributed" if len(tasks) > 1 and len(gpus) > 1 else "running"
    if statuses == {"queued"}:
        return "all_queued" if len(tasks) > 1 else "queued"
    return "mixed"


@router.post("/batch_predict", summary="Generate text for a batch, split across GPUs")
async def batch_predict(body: BatchPredictRequest, who: PrincipalDep, gateway: GatewayDep) -> dict[str, Any]:
    """The batch is cut into chunks like ``Client.submit_batch``: with ``gpu_options.batch_split`` (default:
    ``gpu.multi_gpu.batch_split``) about 4 chunks per active GPU, never smaller than
    ``min_batch_size_per_gpu``; without it one chunk. Each chunk is one task; the answer has one task entry per
    input item (each resolves with ``GET /task/{id}``) and the chunks. With ``wait``
    > 0 it waits up to that many seconds and includes the results; ``GET /batches/{batch_id}`` gives them too."""
    return await _submit_batch(body, who, gateway)


@router.post("/predict/batch", summary="Alias of POST /batch_predict")
async def predict_batch(body: BatchPredictRequest, who: PrincipalDep, gateway: GatewayDep) -> dict[str, Any]:
    return await _submit_batch(body, who, gateway)


def batch_status(chunks: list[dict[str, Any]]) -> str:
    """completed (every chunk), running or queued (some unfinished), else failed or cancelled."""
    statuses = {t["status"] for t in chunks}
    if statuses == {"completed"}:
        return "completed"
    if statuses & {"queued", "running"}:
        return "running" if statuses & {"running", "completed"} else "queued"
    return "failed" if "failed" in statuses else "cancelled"


async def batch_state(gateway: Gateway, batch: BatchEntry, user: str, is_admin: bool) -> dict[str, Any]:
    tasks = [await gateway.states.describe(t, user, is_admin, result=False) for t in batch.task_ids]
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    return {
        "batch_id": batch.batch_id,
        "user": batch.user,
        "status": batch_status(tasks),
        "size": sum(batch.sizes),
        "submitted": batch.submitted,
        "counts": counts,
        "tasks": tasks,
    }


@router.get("/batches", summary="Your batches, newest first")
async def list_batches(
    who: PrincipalDep,
    gateway: GatewayDep,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=1_000_000),
) -> dict[str, Any]:
    mine = [b for b in reversed(gateway.registry.batches.values()) if who.is_admin or b.user == who.user]
    page = mine[offset : offset + limit]
    return {"batches": [await batch_state(gateway, b, who.user, who.is_admin) for b in page], "total": len(mine)}


@router.get("/batches/{batch_id}", summary="A batch's status, its tasks and (when done) results in input order")
async def get_batch(
    batch_id: str,
    who: PrincipalDep,
    gateway: GatewayDep,
    wait: float = Query(0.0, ge=0.0, le=60.0, description="long poll: seconds to wait for the batch to finish"),
) -> dict[str, Any]:
    registry = gateway.registry
    batch = registry.batch(batch_id, who.user, who.is_admin)
    entries = [registry.tasks[t] for t in batch.task_ids if t in registry.tasks]
    await registry.settle(entries, wait)
    state = await batch_state(gateway, batch, who.user, who.is_admin)
    state["results"] = batch_results(state["tasks"], batch.sizes, await gateway.states.results(entries))
    return state


def batch_results(chunks: list[dict[str, Any]], sizes: list[int], values: dict[str, Any]) -> list[Any]:
    """Every item's result in input order; a failed chunk's items carry its error, an unfinished one's null."""
    results: list[Any] = []
    for task, size in zip(chunks, sizes, strict=True):
        chunk = values.get(task["task_id"])
        if isinstance(chunk, list) and len(chunk) == size:
            results.extend(item_value(v) for v in chunk)
        elif task["status"] in ("failed", "cancelled", "rejected"):  # each item of a failed chunk says why
            error = task.get("error") or f"its task {task['task_id']} {task['status']}"
            results.extend({"status": task["status"], "error": error} for _ in range(size))
        else:
            results.extend([None] * size)
    return results


async def cancel_batch(gateway: Gateway, batch: BatchEntry, user: str, is_admin: bool, reason: str) -> dict[str, Any]:
    outcome = {}
    link = gateway.link
    for task_id in batch.task_ids:
        try:
            await link.ask(link.router(user, is_admin).cancel(task_id, reason))
            outcome[task_id] = "cancelled"
        except RouterError as exc:
            outcome[task_id] = "already finished" if exc.code == 409 else str(exc)
    return {"batch_id": batch.batch_id, "tasks": outcome}


@router.delete("/batches/{batch_id}", summary="Cancel every unfinished task of a batch")
async def delete_batch(
    batch_id: str, who: PrincipalDep, gateway: GatewayDep, body: CancelRequest | None = None
) -> dict[str, Any]:
    batch = gateway.registry.batch(batch_id, who.user, who.is_admin)
    reason = body.reason if body else ""
    return {**await cancel_batch(gateway, batch, who.user, who.is_admin, reason), "status": "cancelled"}
