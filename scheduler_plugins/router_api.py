"""The router's RPC handlers (``await client.scheduler.altlas_<name>(...)``).

They read the scheduling core through its read-only :class:`~altlas_dask.scheduling.view.CoreView`
and change it only through the router's commands. Errors come back as
``{"error": message, "code": http_like_status}`` so the Python client and the REST
gateway can both report them clearly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from altlas_dask.quotas import QuotaValueError
from altlas_dask.scheduling.lifecycle import TaskStatus

if TYPE_CHECKING:
    from scheduler_plugins.gpu_router import GpuRouter


def error(message: str, code: int) -> dict[str, Any]:
    return {"error": message, "code": code}


def handlers(router: GpuRouter) -> dict[str, Callable[..., Any]]:
    """Every public ``RouterApi`` method, as scheduler handler ``altlas_<name>``."""
    api = RouterApi(router)
    return {f"altlas_{name}": getattr(api, name) for name in dir(api) if not name.startswith("_")}


class RouterApi:
    def __init__(self, router: GpuRouter) -> None:
        self._router = router
        self._view = router.view

    # -- GPUs -----------------------------------------------------------------------------------
    def gpus(self) -> dict[str, Any]:
        return {"gpus": [g.to_dict() for g in self._view.gpus()], "queued": self._view.queued()}

    def policy(self) -> dict[str, Any]:
        return self._view.policy.model_dump()

    def drain(self, gpu: int, reason: str = "") -> dict[str, Any]:
        return self._router.set_draining(gpu, True, reason)

    def enable(self, gpu: int) -> dict[str, Any]:
        return self._router.set_draining(gpu, False, "")

    def status(self) -> dict[str, Any]:
        view = self._view
        return {"counters": view.counters(), "tracked": dict(view.live_statuses()), "recent": view.placements(50)}

    # -- tasks (a user sees and cancels only their own; admins all) ----------------------------------
    def _denied(self, as_user: str | None, user: str | None, what: str) -> dict[str, Any] | None:
        """A 403 unless ``as_user`` may read ``user``'s data (their own, or an admin; None = trusted caller)."""
        if as_user is None or user in (None, as_user) or self._view.is_admin(as_user):
            return None
        return error(f"user {as_user!r} may not {what} of {user!r}", 403)

    def _scope(self, as_user: str, user: str | None) -> str | None:
        """Whose rows to return: any user (or all) for an admin, otherwise only the caller's own."""
        return user if self._view.is_admin(as_user) else as_user

    def _visible(self, owner: str | None, as_user: str | None) -> bool:
        return as_user is None or self._view.is_admin(as_user) or owner == as_user

    async def explain(self, keys: list, as_user: str | None = None) -> dict[str, Any]:
        """Live and recent tasks from memory; older ones from the accounting database."""
        keys = [str(k) for k in keys]
        found = self._view.explain(keys)
        missing = [k for k in keys if k not in found]
        if missing:
            store = self._router.store
            await asyncio.to_thread(store.flush)
            found.update(await asyncio.to_thread(store.tasks_by_key, missing))
        return {k: info for k, info in found.items() if self._visible(info.get("user"), as_user)}

    def tasks(
        self,
        as_user: str,
        user: str | None = None,
        status: str | list[str] | None = None,
        limit: int = 100,
        offset: int = 0,
        order: str = "submitted",
    ) -> dict[str, Any]:
        """Live and recently finished tasks, with true counts per status and queue positions."""
        if denied := self._denied(as_user, user, "list the tasks"):
            return denied
        statuses = [status] if isinstance(status, str) else status
        try:
            return self._view.tasks(self._scope(as_user, user), statuses, order, limit, offset)
        except ValueError as exc:
            return error(str(exc), 400)

    def cancel(self, key: str, as_user: str, reason: str = "") -> dict[str, Any]:
        owner, status = self._view.owner(key), self._view.status_of(key)
        if status is None or not self._visible(owner, as_user):
            return error(f"unknown task {key}", 404)
        if status.final:
            return error(f"task {key} already {status}", 409)
        self._router.cancel(key, as_user, reason)
        return {"key": key, "status": str(TaskStatus.CANCELLED)}

    # -- quotas and usage -------------------------------------------------------------------------------
    def quota(self, user: str, as_user: str | None = None) -> dict[str, Any]:
        if denied := self._denied(as_user, user, "read the quota"):
            return denied
        return self._view.quota_report(user)

    def set_quota(self, user: str, as_user: str, limits: dict[str, Any]) -> dict[str, Any]:
        if not self._view.is_admin(as_user):
            return error(f"user {as_user!r} is not an admin (admins: quotas.admins in cluster.yaml)", 403)
        try:
            new = self._router.core.set_quota(user, limits)
        except QuotaValueError as exc:
            return error(str(exc), 400)
        self._router.store.set_override(user, self._router.core.book.overrides[user])
        self._router._schedule_tick()  # a raised concurrency limit may let waiting work start
        return {"user_id": user, "limits": new.model_dump()}

    async def usage(self, user: str, as_user: str | None = None, since: str | None = None) -> dict[str, Any]:
        if denied := self._denied(as_user, user, "read the usage"):
            return denied
        store = self._router.store
        await asyncio.to_thread(store.flush)
        rows = await asyncio.to_thread(store.usage, user, since)
        return {"user_id": user, "since": since, "days": rows}

    async def records(
        self,
        as_user: str,
        user: str | None = None,
        status: str | None = None,
        since: float | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Final task records from the database (reports)."""
        if denied := self._denied(as_user, user, "read the records"):
            return denied
        user = self._scope(as_user, user)
        store = self._router.store
        await asyncio.to_thread(store.flush)
        rows = await asyncio.to_thread(store.tasks, user=user, status=status, since=since, limit=limit, offset=offset)
        return {"records": rows}
