"""The router's RPC handlers (``await client.scheduler.altlas_<name>(...)``).

The names and the request and reply shapes are the protocol's (:mod:`altlas_dask.protocol`): ``handlers``
registers exactly :class:`~altlas_dask.protocol.Rpc`. They read the scheduling core through its read-only
:class:`~altlas_dask.scheduling.view.CoreView` and change it only with events (:mod:`altlas_dask.scheduling.events`)
the router hands to the core. Errors come back as ``{"error": message, "code": http_like_status}`` (with ``field``
and ``value`` where one is at fault) so the Python client and the REST gateway can both report them clearly.

Every handler takes the ``comm`` it was called on (Dask passes it to handlers whose first parameter is
``comm``), and every call that reads a user's data or changes state acts as a :class:`Caller` from
:mod:`scheduler_plugins.identity`: with ``security.identity: tls`` the comm's verified certificate name
(``as_user`` may only restate it, except for delegates), in open mode the declared ``as_user``, which is
then required. There is no trusted default: drain, enable, quota changes and other users' data need an admin
(``quotas.admins``, or a delegate vouching ``admin=True`` for a user it authenticated, e.g. an admin API key).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

from altlas_dask.accounting.store import AccountingStore
from altlas_dask.errors import IdentityError
from altlas_dask.protocol import ErrorReply, FinishedReply, Rpc, TaskStatus
from altlas_dask.ranges import MAX_GPU_ID, MAX_OFFSET, MAX_ROWS, MAX_TIMESTAMP, MAX_WINDOW_S, check_int, check_number
from altlas_dask.scheduling import events as ev
from altlas_dask.scheduling.quotas import QuotaValueError, validate_override
from altlas_dask.scheduling.view import CoreView
from scheduler_plugins.identity import Caller, Identities, of_comm


class Router(Protocol):
    """What the handlers use of the router: its view of the core, who callers are, the accounting store, and
    ``handle`` (an event to the core, its actions carried out)."""

    view: CoreView
    identities: Identities
    store: AccountingStore | None

    def handle(self, event: ev.Event) -> None: ...


def error(message: str, code: int, field: str | None = None, value: Any = None) -> ErrorReply:
    reply = ErrorReply(error=message, code=code)
    if field is not None:
        reply.update(field=field, value=str(value)[:80])  # as short text: an out-of-range int may not fit msgpack
    return reply


def out_of_range(*checks: tuple[str, Any, float, float, bool]) -> dict[str, Any] | None:
    """A 400 naming the first of ``(name, value, low, high, whole)`` out of range (a caller that bypassed the
    client's checks: such a number must not reach SQLite or the reply's msgpack); None when all are fine."""
    try:
        for name, value, low, high, whole in checks:
            if whole:
                check_int(name, value, int(low), int(high))
            elif value is not None:
                check_number(name, value, low, high)
    except ValueError as exc:
        return error(str(exc), 400, name, value)
    return None


def handlers(router: Router) -> dict[str, Callable[..., Any]]:
    """The protocol's RPCs, each served by its ``RouterApi`` method (tests/test_rpc_names.py: one per name)."""
    api = RouterApi(router)
    return {rpc.value: getattr(api, rpc.method) for rpc in Rpc}


class RouterApi:
    def __init__(self, router: Router) -> None:
        self._router = router
        self._view = router.view
        self._identities = router.identities

    # -- who is calling ----------------------------------------------------------------------------------
    def _caller(self, comm: Any, as_user: str | None, admin: bool = False) -> Caller | dict[str, Any]:
        """The caller, or the error dict to return (401: no identity; 403: may not act as ``as_user``)."""
        try:
            return self._identities.caller(comm, as_user, admin)
        except IdentityError as exc:
            return error(str(exc), exc.code)

    def _is_admin(self, caller: Caller) -> bool:
        return caller.vouched_admin or (caller.named_admin_counts and self._view.is_admin(caller.user))

    def _admin(self, comm: Any, as_user: str | None, admin: bool, what: str) -> Caller | dict[str, Any]:
        caller = self._caller(comm, as_user, admin)
        if isinstance(caller, Caller) and not self._is_admin(caller):
            return error(f"user {caller.user!r} is not an admin (quotas.admins in cluster.yaml): may not {what}", 403)
        return caller

    def _anyone(self, comm: Any) -> dict[str, Any] | None:
        """Public cluster facts (GPUs, policy) need a verified peer when identity is on; nothing in open mode."""
        if self._identities.required and of_comm(comm) is None:
            return error("no verified identity on this connection (security.identity is tls)", 401)
        return None

    # -- GPUs -----------------------------------------------------------------------------------
    def gpus(self, comm: Any = None, **_: Any) -> dict[str, Any]:
        if denied := self._anyone(comm):
            return denied
        return {"gpus": [g.to_dict() for g in self._view.gpus()], "queued": self._view.queued()}

    def speeds(self, comm: Any = None, task_type: str = "inference", **_: Any) -> dict[str, Any]:
        """Relative speed per GPU the router learned for ``task_type`` (1 = the fastest; per unit of ``cost``);
        empty until that type ran (``Client.submit_batch`` splits a batch by it)."""
        if denied := self._anyone(comm):
            return denied
        if not isinstance(task_type, str) or not 1 <= len(task_type) <= 128:
            why = f"task_type must be a name of 1 to 128 characters (got {str(task_type)[:80]!r})"
            return error(why, 400, "task_type", task_type)
        return {"task_type": task_type, "speeds": self._view.speeds(task_type)}

    def policy(self, comm: Any = None, **_: Any) -> dict[str, Any]:
        if denied := self._anyone(comm):
            return denied
        return self._view.policy.model_dump()

    def drain(
        self, comm: Any, gpu: int, reason: str = "", as_user: str | None = None, admin: bool = False
    ) -> dict[str, Any]:
        if bad := out_of_range(("gpu", gpu, 0, MAX_GPU_ID, True)):
            return bad
        caller = self._admin(comm, as_user, admin, f"drain GPU {gpu}")
        if not isinstance(caller, Caller):
            return caller
        return self._set_draining(gpu, True, reason or f"drained by {caller.user}")

    def enable(self, comm: Any, gpu: int, as_user: str | None = None, admin: bool = False) -> dict[str, Any]:
        if bad := out_of_range(("gpu", gpu, 0, MAX_GPU_ID, True)):
            return bad
        caller = self._admin(comm, as_user, admin, f"enable GPU {gpu}")
        if not isinstance(caller, Caller):
            return caller
        return self._set_draining(gpu, False, "")

    def _set_draining(self, gpu: int, draining: bool, reason: str) -> dict[str, Any]:
        known = self._view.known_gpus()
        if gpu not in known:
            return error(f"unknown GPU {gpu}; known GPUs: {sorted(known)}", 404, "gpu", gpu)
        self._router.handle(ev.Drain(gpu, time.time(), reason) if draining else ev.Enable(gpu, time.time()))
        running = next((g.active_requests for g in self._view.gpus() if g.id == gpu), 0)
        return {"gpu": gpu, "draining": draining, "running": running}

    def status(self, comm: Any, as_user: str | None = None, admin: bool = False) -> dict[str, Any]:
        """Counters and the latest placements: every user's for admins, otherwise only the caller's own."""
        caller = self._caller(comm, as_user, admin)
        if not isinstance(caller, Caller):
            return caller
        view = self._view
        recent = view.placements(50 if self._is_admin(caller) else 200)
        if not self._is_admin(caller):
            recent = [p for p in recent if p.get("user") == caller.user][-50:]
        return {"counters": view.counters(), "tracked": dict(view.live_statuses()), "recent": recent}

    # -- tasks (a user sees and cancels only their own; admins all) ----------------------------------
    def _denied(self, caller: Caller, user: str | None, what: str) -> dict[str, Any] | None:
        """A 403 unless ``caller`` may read ``user``'s data (their own, or an admin)."""
        if user in (None, caller.user) or self._is_admin(caller):
            return None
        return error(f"user {caller.user!r} may not {what} of {user!r}", 403)

    def _scope(self, caller: Caller, user: str | None) -> str | None:
        """Whose rows to return: any user (or all) for an admin, otherwise only the caller's own."""
        return user if self._is_admin(caller) else caller.user

    def _visible(self, owner: str | None, caller: Caller) -> bool:
        return owner == caller.user or self._is_admin(caller)

    async def explain(self, comm: Any, keys: list, as_user: str | None = None, admin: bool = False) -> dict[str, Any]:
        """Live and recent tasks from memory (live ones with ``estimated_start`` and ``estimated_completion``,
        Unix seconds, see CoreView.estimate); older ones from the accounting database."""
        caller = self._caller(comm, as_user, admin)
        if not isinstance(caller, Caller):
            return caller
        keys = [str(k) for k in keys]
        found = self._view.explain(keys, now=time.time())
        missing = [k for k in keys if k not in found]
        if missing:
            store = self._router.store
            await asyncio.to_thread(store.flush)
            found.update(await asyncio.to_thread(store.tasks_by_key, missing))
        return {k: info for k, info in found.items() if self._visible(info.get("user"), caller)}

    def tasks(
        self,
        comm: Any,
        as_user: str | None = None,
        user: str | None = None,
        status: str | list[str] | None = None,
        limit: int = 100,
        offset: int = 0,
        order: str = "submitted",
        admin: bool = False,
    ) -> dict[str, Any]:
        """Live and recently finished tasks, with true counts per status and queue positions."""
        if bad := out_of_range(("limit", limit, 0, MAX_ROWS, True), ("offset", offset, 0, MAX_OFFSET, True)):
            return bad
        caller = self._caller(comm, as_user, admin)
        if not isinstance(caller, Caller):
            return caller
        if denied := self._denied(caller, user, "list the tasks"):
            return denied
        statuses = [status] if isinstance(status, str) else status
        try:
            return self._view.tasks(self._scope(caller, user), statuses, order, limit, offset)
        except ValueError as exc:
            return error(str(exc), 400)

    def cancel(
        self, comm: Any, key: str, as_user: str | None = None, reason: str = "", admin: bool = False
    ) -> dict[str, Any]:
        caller = self._caller(comm, as_user, admin)
        if not isinstance(caller, Caller):
            return caller
        owner, status = self._view.owner(key), self._view.status_of(key)
        if status is None or not self._visible(owner, caller):
            return error(f"unknown task {key}", 404)
        if status.final:
            return error(f"task {key} already {status}", 409)
        self._router.handle(ev.Cancel(key, time.time(), caller.user, reason))
        return {"key": key, "status": str(TaskStatus.CANCELLED)}

    # -- quotas and usage -------------------------------------------------------------------------------
    def quota(self, comm: Any, user: str | None = None, as_user: str | None = None, admin: bool = False) -> dict:
        caller = self._caller(comm, as_user, admin)
        if not isinstance(caller, Caller):
            return caller
        user = user or caller.user
        if denied := self._denied(caller, user, "read the quota"):
            return denied
        return self._view.quota_report(user)

    def set_quota(
        self, comm: Any, user: str, limits: dict[str, Any], as_user: str | None = None, admin: bool = False
    ) -> dict[str, Any]:
        caller = self._admin(comm, as_user, admin, f"change the quota of {user!r}")
        if not isinstance(caller, Caller):
            return caller
        try:
            valid = validate_override(limits)
        except QuotaValueError as exc:
            return error(str(exc), 400)
        self._router.handle(ev.QuotaSet(user, valid, time.time()))  # kept in the store; may start waiting work
        return {"user_id": user, "limits": self._view.limits(user), "by": caller.user}

    async def usage(
        self,
        comm: Any,
        user: str | None = None,
        as_user: str | None = None,
        since: str | None = None,
        admin: bool = False,
    ) -> dict[str, Any]:
        caller = self._caller(comm, as_user, admin)
        if not isinstance(caller, Caller):
            return caller
        user = user or caller.user
        if denied := self._denied(caller, user, "read the usage"):
            return denied
        store = self._router.store
        await asyncio.to_thread(store.flush)
        rows = await asyncio.to_thread(store.usage, user, since)
        return {"user_id": user, "since": since, "days": rows}

    async def finished(
        self, comm: Any, window_s: float = 3600.0, as_user: str | None = None, admin: bool = False
    ) -> FinishedReply | ErrorReply:
        """Aggregates of the task records finished in the last ``window_s`` seconds (``GET /metrics``): counts per
        status, response times, rows per GPU, model and user (other users' rows for admins only)."""
        if bad := out_of_range(("window_s", window_s, 0, MAX_WINDOW_S, False)):
            return bad
        caller = self._caller(comm, as_user, admin)
        if not isinstance(caller, Caller):
            return caller
        store = self._router.store
        await asyncio.to_thread(store.flush)
        found = await asyncio.to_thread(store.finished_summary, time.time() - window_s)
        if not self._is_admin(caller):
            found["users"] = [row for row in found["users"] if row[0] == caller.user]
        return found

    async def records(
        self,
        comm: Any,
        as_user: str | None = None,
        user: str | None = None,
        status: str | None = None,
        since: float | None = None,
        limit: int = 1000,
        offset: int = 0,
        admin: bool = False,
    ) -> dict[str, Any]:
        """Final task records from the database (reports)."""
        if bad := out_of_range(
            ("limit", limit, 0, MAX_ROWS, True),
            ("offset", offset, 0, MAX_OFFSET, True),
            ("since", since, 0, MAX_TIMESTAMP, False),
        ):
            return bad
        caller = self._caller(comm, as_user, admin)
        if not isinstance(caller, Caller):
            return caller
        if denied := self._denied(caller, user, "read the records"):
            return denied
        user = self._scope(caller, user)
        store = self._router.store
        await asyncio.to_thread(store.flush)
        rows = await asyncio.to_thread(store.tasks, user=user, status=status, since=since, limit=limit, offset=offset)
        return {"records": rows}
