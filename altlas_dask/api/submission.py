"""Submitting GPU work for API requests, and cancelling it.

Every request becomes a Dask task at once (the gateway holds no queue); the router on the scheduler places it
(or holds it) exactly as for a Python client. Submissions of one moment reach the scheduler as one graph update:
the client's own coalescer (:mod:`altlas_dask.client.coalesce`) groups them. A batch is split the way
``Client.submit_batch`` splits one (:func:`altlas_dask.client.batch_split.plan_chunks`, by the GPUs' speeds).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from altlas_dask.api.errors import ApiError, quota_error
from altlas_dask.api.gpu_list import GpuList
from altlas_dask.api.link import SchedulerLink
from altlas_dask.api.registry import TaskEntry, TaskRegistry, new_id
from altlas_dask.client.batch_split import plan_chunks
from altlas_dask.client.gpu_client import CHUNKS_PER_GPU
from altlas_dask.errors import GpuRoutingError, RouterAccessError, RouterError
from altlas_dask.model import generation_size
from altlas_dask.options import GpuOptions, GpuOptionsError, check_strategy
from altlas_dask.scheduling.quotas import QuotaExceededError

logger = logging.getLogger(__name__)


def generation_cost(options: GpuOptions, items: Sequence[Mapping[str, Any]]) -> float:
    """A generation task's ``gpu_options.cost``: per item the caller's ``cost``, else its prompt and
    ``max_length`` in characters (the shipped model's unit), summed over the task's items."""
    if options.cost is not None:
        return options.cost * len(items)
    return float(sum(generation_size(item) for item in items)) or 1.0


class Submission:
    """Validates ``gpu_options``, submits tasks, learns where the router put them, cancels them."""

    def __init__(self, link: SchedulerLink, registry: TaskRegistry, gpus: GpuList) -> None:
        self.link, self.registry, self.gpus = link, registry, gpus

    async def options(
        self, raw: Mapping[str, Any] | None, user: str, is_admin: bool, task_type: str, memory_mb: int = 0
    ) -> GpuOptions:
        """Validate ``gpu_options`` for ``user``; check a GPU can take work at all (else 503)."""
        raw = dict(raw or {})
        if memory_mb:
            raw.setdefault("memory_mb", memory_mb)
        if "user" in raw and raw["user"] != user and not is_admin:
            raise ApiError(403, f"gpu_options.user: your API key acts as {user!r}; only admins submit for others")
        raw.setdefault("user", user)
        raw.setdefault("task_type", task_type)
        options = GpuOptions.parse(raw)
        policy = self.link.policy
        if options.strategy is not None and "allowed_strategies" in policy:
            check_strategy(options.strategy, (*policy["allowed_strategies"], "single_gpu"))
        gpus = await self.gpus.read()
        if not any(g["status"] == "active" for g in gpus):
            states = ", ".join(f"GPU {g['id']}: {g['status']}" for g in gpus) or "no GPU worker connected"
            raise ApiError(503, f"no GPU available ({states})", {"Retry-After": "5"})
        if options.specific_gpu_id is not None and options.specific_gpu_id not in {g["id"] for g in gpus}:
            raise GpuOptionsError(
                f"invalid gpu_options.specific_gpu_id: unknown GPU {options.specific_gpu_id}; "
                f"this cluster has GPUs {sorted(g['id'] for g in gpus)}"
            )
        return options

    def submit(
        self,
        fn: Any,
        kwargs: dict[str, Any],
        options: GpuOptions,
        *,
        user: str,
        kind: str,
        workload: str,
        key: str | None = None,
        **entry: Any,
    ) -> TaskEntry:
        """Submit ``fn(**kwargs)`` as task ``key``. The entry is kept before this event-loop turn ends, so the
        router's first pushed record of the task always finds it."""
        key = key or new_id(workload)
        self.link.check_available()
        future = self.link.client.submit(fn, key=key, pure=False, gpu_options=options, **kwargs)
        task = TaskEntry(key, user, kind, workload, future, time.time(), **entry)
        self.registry.remember(task)
        return task

    async def send_batch(self, items: list[dict[str, Any]], context: tuple[GpuOptions, str]) -> TaskEntry:
        """The request batcher's batch: one ``generate_batch`` task, charged one request per item."""
        from altlas_dask.model import generate_batch

        options, user = context
        options = options.model_copy(update={"requests": len(items), "cost": generation_cost(options, items)})
        size = len(items)
        return self.submit(
            generate_batch, {"items": items}, options, user=user, kind="predict", workload="generate", items=(0, size)
        )

    async def chunk_plan(self, count: int, options: GpuOptions) -> list[tuple[int | None, int]]:
        """``(gpu or None, size)`` of each chunk of a batch of ``count`` items (``Client.submit_batch``'s split)."""
        policy = self.link.policy
        split = policy.get("batch_split", True) if options.batch_split is None else options.batch_split
        if not split or options.specific_gpu_id is not None:
            return [(None, count)]
        learned = await self.link.ask(self.link.router().speeds(options.task_type))
        minimum = int(policy.get("min_batch_size_per_gpu", 1))
        return plan_chunks(count, await self.gpus.read(), learned, minimum, CHUNKS_PER_GPU)

    async def refuse_rejected(self, entry: TaskEntry, task_id: str, forget: list[str]) -> None:
        """If ``entry``'s task was refused at admission (quota: 429) or can never be placed (400), raise that as
        this request's error (as ``task_id``) and forget the ``forget`` tasks; otherwise nothing."""
        outcome = await entry.outcome_of()
        exc = outcome[2] if outcome is not None else None
        if isinstance(exc, QuotaExceededError):
            self.registry.forget(forget)
            raise quota_error(exc, task_id=task_id, status="rejected") from None
        if isinstance(exc, GpuRoutingError | GpuOptionsError):
            self.registry.forget(forget)
            raise ApiError(400, str(exc), task_id=task_id, status="rejected") from None

    async def placed(self, entries: list[TaskEntry]) -> dict[str, dict[str, Any]]:
        """Wait (up to ``placement_wait``) for the router's first pushed record of each task; refuse rejected ones.

        A task the router rejected at admission (quota) or can never place fails at once: that
        becomes this request's error (429, 400) and the task is forgotten.
        """
        await self.registry.seen(entries, self.link.settings.placement_wait)
        found = {e.task_id: e.router for e in entries if e.router is not None}
        for entry in entries:
            info = found.get(entry.task_id)
            doomed = info is not None and (
                info.get("error") or info.get("outcome") == "impossible" or info.get("status") == "rejected"
            )
            if doomed and entry.future is not None:
                await self.registry.settle([entry], 5)
                await self.refuse_rejected(entry, entry.task_id, [e.task_id for e in entries])
        return found

    async def cancel(self, task_id: str, user: str, is_admin: bool, reason: str) -> dict[str, Any]:
        """Cancel a task through the router as ``user``; another user's task answers 404, as an unknown one (ids do
        not leak)."""
        try:
            await self.link.ask(self.link.router(user, is_admin).cancel(task_id, reason))
        except RouterAccessError:
            raise ApiError(404, f"unknown task {task_id!r}") from None
        return {"task_id": task_id, "status": "cancelled"}

    async def cancel_item(self, task_id: str, chunk: TaskEntry, index: int, by: str, reason: str) -> dict[str, Any]:
        """Cancel one request of a batch task: it answers ``cancelled`` and its result is dropped, its neighbours
        run on; once every request of the batch is cancelled, the batch task itself is cancelled."""
        if not chunk.running:
            raise ApiError(409, f"task {task_id!r} already finished")
        cancelled = chunk.meta.setdefault("cancelled", {})
        cancelled[index] = f"task {task_id} cancelled by {by}" + (f": {reason}" if reason else "")
        if len(cancelled) == (chunk.items[1] if chunk.items else 1):
            with contextlib.suppress(RouterError):  # it finished meanwhile
                await self.link.ask(self.link.router(chunk.user).cancel(chunk.task_id, reason))
        else:  # its row stops on the worker running the batch (or when one starts it); best effort
            from altlas_dask.model.row_stops import stop_row

            try:
                await self.link.ask(self.link.client.run(stop_row, chunk.task_id, index, on_error="return"))
            except ApiError:
                logger.warning("could not reach the workers to stop row %d of %s", index, chunk.task_id)
        return {"task_id": task_id, "status": "cancelled"}
