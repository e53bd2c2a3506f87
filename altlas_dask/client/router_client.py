"""``RouterClient``: the one way to call the GPU router, asynchronous first.

It owns what every caller needs around a router RPC (docs/design.md, "One router client"):

- the names and request shapes of :mod:`altlas_dask.protocol` (a field the RPC does not take is a ``TypeError``
  here, before anything is sent);
- acting-as: each call that acts for a user says whom (``as_user``), and a delegate (the gateway, the console)
  vouches ``admin`` for a user it authenticated; callers pick the user with :meth:`RouterClient.acting_as` and
  never spell ``as_user`` themselves (docs/security.md);
- error decoding: an ``{"error", "code"}`` reply raises the :class:`~altlas_dask.errors.RouterError` subclass of
  its code, with the field and value the router names;
- retries on a lost connection, with distributed's own ``retry`` and its ``distributed.comm.retry.delay``
  settings, for every RPC but cancel (a second cancel answers 409).

It works on an asynchronous ``distributed.Client`` (the gateway's); :class:`altlas_dask.Client` runs it through
``Client.sync`` for its synchronous methods.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

import dask.config
import distributed
from dask.utils import parse_timedelta
from distributed.utils_comm import retry

from altlas_dask.errors import ROUTER_ERRORS, RouterError
from altlas_dask.protocol import (
    CancelReply,
    DrainReply,
    ExplainReply,
    FinishedReply,
    GpusReply,
    PolicyReply,
    QuotaReply,
    RecordsReply,
    Rpc,
    SetQuotaReply,
    StatusReply,
    TasksReply,
    UsageReply,
)
from altlas_dask.ranges import (
    MAX_GPU_ID,
    MAX_OFFSET,
    MAX_QUOTA_VALUE,
    MAX_ROWS,
    MAX_TIMESTAMP,
    MAX_WINDOW_S,
    check_int,
    check_number,
)

RETRIES = 2  # attempts after the first one, on a lost connection (the first retry goes out at once)


def decoded(rpc: Rpc, reply: Any, address: str) -> Any:
    """``reply`` itself, or the exception its ``{"error", "code"}`` names raised (503 where no router answered)."""
    if reply is None:
        raise RouterError(
            f"no GPU router on scheduler {address} (no handler {rpc.value!r}): start the cluster with "
            "altlas_dask.start_cluster or `dask scheduler --preload scheduler_plugins.gpu_router`",
            503,
        )
    if isinstance(reply, dict) and "error" in reply:
        code = reply.get("code", 400)
        raise ROUTER_ERRORS.get(code, RouterError)(reply["error"], code, reply.get("field"), reply.get("value"))
    return reply


def check_quota_limits(limits: dict[str, Any]) -> dict[str, Any]:
    """``limits`` unchanged if every value is a finite number in 0..``MAX_QUOTA_VALUE`` (or None); else
    ``ValueError`` naming the limit and the value (every value stays inside msgpack's and SQLite's integers)."""
    for name, value in limits.items():
        if value is not None:
            check_number(f"set_quota: {name}", value, 0, MAX_QUOTA_VALUE)
    return dict(limits)


@dataclass(frozen=True)
class RouterClient:
    """Router RPCs on ``client``'s scheduler connection, acting as ``user`` (``admin``: vouched by a delegate).

    ``timeout`` bounds each call, retries included (None: no bound); ``retries`` is how many times a call is
    sent again after a lost connection."""

    client: distributed.Client
    user: str | None = None
    admin: bool = False
    timeout: float | None = None
    retries: int = RETRIES

    def acting_as(self, user: str | None, admin: bool = False) -> RouterClient:
        """The same connection acting for ``user`` (a delegate's call for a user it authenticated)."""
        return replace(self, user=user, admin=admin)

    async def call(self, rpc: Rpc, **request: Any) -> Any:
        """Send ``rpc`` with ``request`` (acting as :attr:`user`); its reply, or its error raised."""
        unknown = set(request) - rpc.fields
        if unknown or {"as_user", "admin"} & set(request):
            raise TypeError(
                f"{rpc.value} takes {sorted(rpc.fields - {'as_user', 'admin'})}, not {sorted(set(request))} "
                "(whom it acts as comes from RouterClient.acting_as)"
            )
        if rpc.acts_as_user:
            request["as_user"] = self.user
            if self.admin:
                request["admin"] = True
        flush = getattr(self.client, "flush_submissions", None)
        if flush is not None:  # an altlas Client holding submissions: the router must see them first
            flush()
        handler = getattr(self.client.scheduler, rpc.value)
        delays = dask.config.get("distributed.comm.retry.delay")
        sending = retry(
            lambda: handler(**request),
            count=self.retries if rpc.retried else 0,
            delay_min=parse_timedelta(delays["min"], default="s"),
            delay_max=parse_timedelta(delays["max"], default="s"),
            operation=rpc.value,
        )
        reply = await (sending if self.timeout is None else asyncio.wait_for(sending, self.timeout))
        return decoded(rpc, reply, self.client.scheduler.address)

    # -- the cluster ---------------------------------------------------------------------------------------
    async def gpus(self) -> GpusReply:
        """Every GPU as the router sees it (heartbeat, in-flight work, drain) and how many tasks wait."""
        return await self.call(Rpc.GPUS)

    async def policy(self) -> PolicyReply:
        return await self.call(Rpc.POLICY)

    async def speeds(self, task_type: str) -> dict[int, float]:
        """Relative speed per GPU learned for ``task_type`` (1 = the fastest); empty until that type ran."""
        reply = await self.call(Rpc.SPEEDS, task_type=task_type)
        return {int(gpu): float(speed) for gpu, speed in reply["speeds"].items()}

    async def drain(self, gpu: int, reason: str = "") -> DrainReply:
        """No new work on ``gpu`` (admins); running work finishes."""
        return await self.call(Rpc.DRAIN, gpu=check_int("gpu", gpu, 0, MAX_GPU_ID), reason=reason)

    async def enable(self, gpu: int) -> DrainReply:
        return await self.call(Rpc.ENABLE, gpu=check_int("gpu", gpu, 0, MAX_GPU_ID))

    async def status(self) -> StatusReply:
        """Counters and the latest placements (the user's own; an admin's: everyone's)."""
        return await self.call(Rpc.STATUS)

    # -- tasks ---------------------------------------------------------------------------------------------
    async def explain(self, keys: list[str]) -> ExplainReply:
        """key -> the routing decision, for the keys this user may see (others are left out)."""
        return await self.call(Rpc.EXPLAIN, keys=[str(k) for k in keys])

    async def tasks(
        self,
        user: str | None = None,
        status: str | list[str] | None = None,
        limit: int = 100,
        offset: int = 0,
        order: str = "submitted",
    ) -> TasksReply:
        """Live and recently finished tasks (the user's own; an admin's: ``user``'s, or everyone's)."""
        limit, offset = check_int("limit", limit, 0, MAX_ROWS), check_int("offset", offset, 0, MAX_OFFSET)
        return await self.call(Rpc.TASKS, user=user, status=status, limit=limit, offset=offset, order=order)

    async def cancel(self, key: str, reason: str = "") -> CancelReply:
        return await self.call(Rpc.CANCEL, key=key, reason=reason)

    # -- quotas and accounting -------------------------------------------------------------------------------
    async def quota(self, user: str | None = None) -> QuotaReply:
        return await self.call(Rpc.QUOTA, user=user)

    async def set_quota(self, user: str, limits: dict[str, Any]) -> SetQuotaReply:
        return await self.call(Rpc.SET_QUOTA, user=user, limits=check_quota_limits(limits))

    async def usage(self, user: str | None = None, since: str | None = None) -> UsageReply:
        return await self.call(Rpc.USAGE, user=user, since=since)

    async def records(
        self,
        user: str | None = None,
        status: str | None = None,
        since: float | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> RecordsReply:
        """Final task records from the accounting database, newest first."""
        limit, offset = check_int("limit", limit, 0, MAX_ROWS), check_int("offset", offset, 0, MAX_OFFSET)
        if since is not None:
            since = float(check_number("since", since, 0, MAX_TIMESTAMP))
        return await self.call(Rpc.RECORDS, user=user, status=status, since=since, limit=limit, offset=offset)

    async def finished(self, window_s: float = 3600.0) -> FinishedReply:
        """Aggregates of the task records finished in the last ``window_s`` seconds (the user's own rows; an
        admin's: everyone's), read by the router from its accounting database."""
        return await self.call(Rpc.FINISHED, window_s=float(check_number("window_s", window_s, 0, MAX_WINDOW_S)))
