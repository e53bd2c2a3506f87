"""The router's RPC handlers (``await client.scheduler.altlas_<name>(...)``).

Errors come back as ``{"error": message, "code": http_like_status}`` so the
Python client and the REST gateway can both report them clearly.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from altlas_dask.quotas import QuotaValueError

if TYPE_CHECKING:
    from scheduler_plugins.gpu_router import GpuRouter


def error(message: str, code: int) -> dict[str, Any]:
    return {"error": message, "code": code}


class RouterApi:
    """Mixed into :class:`GpuRouter`; every public ``rpc_*`` becomes handler ``altlas_*``."""

    def handlers(self: GpuRouter) -> dict[str, Any]:
        return {f"altlas_{name[4:]}": getattr(self, name) for name in dir(self) if name.startswith("rpc_")}

    # -- GPUs -----------------------------------------------------------------------------------
    def rpc_gpus(self: GpuRouter) -> dict[str, Any]:
        return {"gpus": [s.to_dict() for s in sorted(self.snapshot(), key=lambda s: s.id)], "queued": len(self.queue)}

    def rpc_policy(self: GpuRouter) -> dict[str, Any]:
        return self.policy.model_dump()

    def rpc_drain(self: GpuRouter, gpu: int, reason: str = "") -> dict[str, Any]:
        return self.set_draining(gpu, True, reason)

    def rpc_enable(self: GpuRouter, gpu: int) -> dict[str, Any]:
        return self.set_draining(gpu, False, "")

    def rpc_status(self: GpuRouter) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        for t in self.tracked.values():
            by_status[t.status] = by_status.get(t.status, 0) + 1
        return {"counters": dict(self.counters), "tracked": by_status, "recent": list(self.recent)[-50:]}

    # -- tasks (a user sees and cancels only their own; admins all) ----------------------------------
    def _denied(self: GpuRouter, as_user: str | None, user: str | None, what: str) -> dict[str, Any] | None:
        """A 403 unless ``as_user`` may read ``user``'s data (their own, or an admin; None = trusted caller)."""
        if as_user is None or user in (None, as_user) or self.book.is_admin(as_user):
            return None
        return error(f"user {as_user!r} may not {what} of {user!r}", 403)

    def _scope(self: GpuRouter, as_user: str, user: str | None) -> str | None:
        """Whose rows to return: any user (or all) for an admin, otherwise only the caller's own."""
        return user if self.book.is_admin(as_user) else as_user

    def _visible(self: GpuRouter, info: dict[str, Any], as_user: str | None) -> bool:
        return as_user is None or self.book.is_admin(as_user) or info.get("user") == as_user

    def rpc_explain(self: GpuRouter, keys: list, as_user: str | None = None) -> dict[str, Any]:
        out = {}
        for key in keys:
            tracked = self.tracked.get(key)
            info = tracked.explain() if tracked is not None else self.finished.get(key)
            if info is not None and self._visible(info, as_user):
                out[str(key)] = info
        return out

    def rpc_tasks(
        self: GpuRouter,
        as_user: str,
        user: str | None = None,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Live and recently finished tasks, newest first."""
        if denied := self._denied(as_user, user, "list the tasks"):
            return denied
        user = self._scope(as_user, user)
        rows = [t.explain() for t in self.tracked.values()] + list(self.finished.values())
        rows = [r for r in rows if (user is None or r["user"] == user) and (status is None or r["status"] == status)]
        rows.sort(key=lambda r: r["submitted"], reverse=True)
        return {"tasks": rows[offset : offset + limit], "total": len(rows)}

    def rpc_cancel(self: GpuRouter, key: str, as_user: str, reason: str = "") -> dict[str, Any]:
        tracked = self.tracked.get(key)
        if tracked is None:
            done = self.finished.get(key)
            if done is not None and self._visible(done, as_user):
                return error(f"task {key} already {done['status']}", 409)
            return error(f"unknown task {key}", 404)
        if not self._visible(tracked.explain(), as_user):
            return error(f"user {as_user!r} may not cancel task {key}: it belongs to another user", 403)
        self.cancel(tracked, as_user, reason)
        return {"key": key, "status": "cancelled"}

    # -- quotas and usage -------------------------------------------------------------------------------
    def rpc_quota(self: GpuRouter, user: str, as_user: str | None = None) -> dict[str, Any]:
        if denied := self._denied(as_user, user, "read the quota"):
            return denied
        return self.book.report(user)

    def rpc_set_quota(self: GpuRouter, user: str, as_user: str, limits: dict[str, Any]) -> dict[str, Any]:
        if not self.book.is_admin(as_user):
            return error(f"user {as_user!r} is not an admin (admins: quotas.admins in cluster.yaml)", 403)
        try:
            new = self.book.set_override(user, limits)
        except QuotaValueError as exc:
            return error(str(exc), 400)
        self.store.set_override(user, self.book.overrides[user])
        self.schedule_dispatch()  # a raised concurrency limit may let waiting work start
        return {"user_id": user, "limits": new.model_dump()}

    async def rpc_usage(
        self: GpuRouter, user: str, as_user: str | None = None, since: str | None = None
    ) -> dict[str, Any]:
        if denied := self._denied(as_user, user, "read the usage"):
            return denied
        await asyncio.to_thread(self.store.flush)
        rows = await asyncio.to_thread(self.store.usage, user, since)
        return {"user_id": user, "since": since, "days": rows}

    async def rpc_records(
        self: GpuRouter,
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
        await asyncio.to_thread(self.store.flush)
        rows = await asyncio.to_thread(
            self.store.tasks, user=user, status=status, since=since, limit=limit, offset=offset
        )
        return {"records": rows}
