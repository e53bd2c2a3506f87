"""A task's state as the REST API shows it (seed 004 section 3.3): ``task_id``, ``gpu_id``, ``status`` and, when
completed, ``result``.

The future's outcome wins over the router's record. For its own tasks the gateway reads the record the router
pushed (:mod:`altlas_dask.api.registry`); it asks the router (``altlas_explain``) only for a task it does not
hold or whose record has not come yet: one ``GET /task`` makes at most one router call.
"""

from __future__ import annotations

import asyncio
from typing import Any

from distributed.client import FutureCancelledError

from altlas_dask.api.errors import ApiError
from altlas_dask.api.link import SchedulerLink
from altlas_dask.api.registry import TaskEntry, TaskRegistry, route_key
from altlas_dask.protocol import TaskStatus, api_status

#: A task answered completed whose result this gateway never fetched, and the scheduler connection then broke.
RESULT_LOST = "its result was lost with the scheduler before this gateway fetched it; submit it again"
Info = dict[str, Any]


def router_api_status(status: str | None) -> str:
    """The REST spelling (protocol.api_status) of a router status; an unknown one is passed through."""
    try:
        return api_status(status or "queued")
    except ValueError:
        return str(status)


def item_value(value: Any) -> Any:
    """A batch item's result as the API shows it: an item that failed alone is ``{"status": "failed", "error"}``."""
    if isinstance(value, BaseException):
        return {"status": "failed", "error": f"{type(value).__name__}: {value}"[:1000]}
    return value


def item_state(chunk: TaskEntry, index: int, value: Any) -> dict[str, Any]:
    """Item ``index`` of batch task ``chunk`` apart from its batch: ``{"status", "error"}`` when it was cancelled
    alone or failed alone (``value``, its entry of the batch's result, is an exception), ``{"result"}`` when it
    has its own result, else ``{}`` (it shares its batch's state)."""
    cancelled = chunk.meta.get("cancelled", {})
    if index in cancelled:
        return {"status": "cancelled", "error": cancelled[index]}
    own = item_value(value)
    if isinstance(own, dict) and own.get("status") == "failed":
        return {"status": "failed", "error": own["error"]}
    return {} if own is None else {"result": own}


def shape_result(value: Any) -> Any:
    """Seed 004 section 3.3.5 ``result``: the workload's dict; a batch chunk's list becomes ``{"results": [...]}``."""
    if isinstance(value, list):
        return {"results": [item_value(v) for v in value]}
    return value


def _fetched(entry: TaskEntry) -> asyncio.Future | None:
    """The result :meth:`TaskStates.value` or :meth:`TaskStates.results` fetched for ``entry`` once, if any."""
    fetch = entry.meta.get("fetch")
    return fetch if fetch is not None and fetch.done() and not fetch.cancelled() and fetch.exception() is None else None


async def _outcome(future: Any) -> Any:
    return await future


class TaskStates:
    """Reads tasks' states and results for the routes."""

    def __init__(self, link: SchedulerLink, registry: TaskRegistry) -> None:
        self.link, self.registry = link, registry

    async def explain(self, task_ids: list[str]) -> dict[str, Info]:
        """The router's records of ``task_ids`` (one call; the gateway acts as itself and filters per key)."""
        return await self.link.ask(self.link.router().explain(task_ids)) if task_ids else {}

    async def record(self, entry: TaskEntry, *, final: bool = False) -> Info | None:
        """The router's record of one of the gateway's tasks: the pushed one; asked for (one call) while none came
        yet for a running task, or, with ``final``, while the pushed one is older than the task's end."""
        info = entry.router
        stale = info is None or (final and not entry.running and info.get("finished_at") is None)
        if (entry.running and info is None) or (final and stale):
            info = (await self.explain([entry.task_id])).get(entry.task_id) or info
        return info

    async def lookup(
        self, task_id: str, user: str, is_admin: bool, *, final: bool = False
    ) -> tuple[str, TaskEntry | None, Info | None]:
        """``(key, entry, router record)`` of ``task_id`` as ``user`` names it (a task id, or a ``request_id`` of
        theirs from /route); 404 when neither the gateway nor the router knows it, or it is another user's. At most
        one router call (``final``: see :meth:`record`)."""
        info = None
        key = task_id
        if task_id not in self.registry.tasks:
            own = route_key(task_id, user)
            if own in self.registry.tasks:
                key = own
            else:
                found = await self.explain([task_id, own])
                key = own if own in found else task_id
                info = found.get(key)
        entry = self.registry.entry(key, user, is_admin)
        if entry is not None:
            info = await self.record(entry, final=final)
        if info is not None and not is_admin and info.get("user") != user:
            info = None
        if entry is None and info is None:
            raise ApiError(404, f"unknown task {task_id!r}")
        return key, entry, info

    async def describe(self, task_id: str, user: str, is_admin: bool, *, result: bool = True) -> dict[str, Any]:
        """Seed 004 section 3.3 for a task id (a batch item's too); 404 when unknown or another user's."""
        item = self.registry.item(task_id)
        if item is not None and (is_admin or item[0].user == user):
            return await self.describe_item(task_id, *item, with_result=result)
        return await self.describe_found(*await self.lookup(task_id, user, is_admin), result=result)

    async def describe_found(
        self, key: str, entry: TaskEntry | None, info: Info | None, *, result: bool = True
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"task_id": key, **await self.state(entry, info, with_result=result)}
        if info is not None:
            out["user"] = info.get("user")
        if entry is not None:
            out["user"] = entry.user
            if entry.batch_id is not None:
                out["batch_id"] = entry.batch_id
                out["items"] = {"start": entry.items[0], "count": entry.items[1]}
        return out

    async def describe_item(self, task_id: str, chunk: TaskEntry, index: int, *, with_result: bool) -> dict[str, Any]:
        """One input item of a batch: its chunk's status and GPU, its own result or error."""
        state = await self.state(chunk, await self.record(chunk), with_result=True)
        out: dict[str, Any] = {"task_id": task_id, "gpu_id": state["gpu_id"], "status": state["status"]}
        own = item_state(chunk, index, state["result"]["results"][index] if "result" in state else None)
        if "status" in own:  # cancelled or failed alone: its neighbours ran on
            out.update(own)
        elif "error" in state:
            out["error"] = state["error"]
        elif "result" in own:
            if with_result:
                out["result"] = own["result"]
            if own["result"].get("batch_size"):
                out["batch_size"] = own["result"]["batch_size"]
        first = chunk.items[0] if chunk.items else 0
        out.update(user=chunk.user, chunk_id=chunk.task_id, item=first + index)
        if chunk.batch_id is not None:
            out["batch_id"] = chunk.batch_id
        return out

    async def state(self, entry: TaskEntry | None, info: Info | None, *, with_result: bool = False) -> dict[str, Any]:
        """``gpu_id``, ``status`` (the API's spelling, from :mod:`altlas_dask.protocol`) and ``error``;
        the future's outcome wins over the router's record. The one place a task's API status is computed."""
        out: dict[str, Any] = {"gpu_id": None, "status": "queued"}
        if info is not None:
            out.update(gpu_id=info.get("gpu"), status=router_api_status(info.get("status")))
            if info.get("error"):
                out["error"] = info["error"]
        if entry is None:
            return out
        outcome = await entry.outcome_of()
        if outcome is None:
            if out["status"] in ("completed", "failed"):
                # the router has the final state a moment before this client's future does: report the
                # outcome together with its result or error, on the next poll
                out["status"] = "running"
        else:
            status, error, _ = outcome
            out["status"] = api_status(status)
            if error is not None:
                out["error"] = error
            if status is TaskStatus.COMPLETED and with_result:
                try:
                    value = await self.value(entry)
                except FutureCancelledError:
                    out["error"] = RESULT_LOST
                    return out
                out["result"] = shape_result(value)
                first = value if isinstance(value, dict) else next((v for v in value if isinstance(v, dict)), {})
                gpu = first.get("gpu")
                if gpu is not None:
                    out["gpu_id"] = gpu
                if isinstance(value, dict) and value.get("batch_size"):  # dynamic batching: the batch it ran in
                    out["batch_size"] = value["batch_size"]
        if out["gpu_id"] is None:
            out["gpu_id"] = entry.gpu
        elif entry.gpu is None:
            entry.gpu = out["gpu_id"]
        return out

    async def value(self, entry: TaskEntry) -> Any:
        """A finished task's result, fetched from its worker once and shared by every request that reads it (the
        requests of one batch task); within ``rpc_timeout``, else the 503. A failed fetch is tried again."""
        fetch = entry.meta.get("fetch")  # (kept: the result outlives a scheduler outage here)
        if fetch is None:
            fetch = entry.meta["fetch"] = asyncio.ensure_future(_outcome(entry.future))
            fetch.add_done_callback(lambda f: f.cancelled() or f.exception() is None or entry.meta.pop("fetch", None))
        return await self.link.ask(asyncio.shield(fetch))

    async def results(self, entries: list[TaskEntry]) -> dict[str, Any]:
        """Results of the finished futures among ``entries``, by task id (one gather; a result that cannot be
        fetched, e.g. lost with its worker, is left out: it never shifts another task's result)."""
        for e in entries:
            if e.future is not None and e.future.status == "finished":
                await e.outcome_of()
        kept = {e.task_id: f.result() for e in entries if e.completed and (f := _fetched(e)) is not None}
        done = [e for e in entries if e.completed and e.task_id not in kept and e.future.status == "finished"]
        if not done:
            return kept
        try:
            values = await self.link.ask(self.link.client.gather([e.future for e in done], errors="raise"))
        except ApiError:
            raise
        except Exception:  # one result is gone: fetch each on its own so the others stay with their tasks
            values = await self.link.ask(asyncio.gather(*(_outcome(e.future) for e in done), return_exceptions=True))
        for e, v in zip(done, values, strict=True):
            if not isinstance(v, BaseException):
                e.meta["fetch"] = fetched = asyncio.get_running_loop().create_future()
                fetched.set_result(v)
                kept[e.task_id] = v
        return kept
