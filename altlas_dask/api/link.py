"""The gateway's link to the scheduler: one asynchronous altlas ``Client``, its supervision through outages, and
the router calls made on it.

While the scheduler is away every endpoint answers 503 with ``Retry-After`` at once (no network wait); the link
reconnects by itself (a new client if Dask's own reconnection gave up) and, once the router answers again, runs
its ``on_recovered`` callbacks (the task feed subscribes again, the GPU list is read afresh).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from altlas_dask.api.errors import ApiError
from altlas_dask.api.settings import ApiSettings
from altlas_dask.client.gpu_client import Client
from altlas_dask.client.router_client import RouterClient
from altlas_dask.config import AltlasConfig
from altlas_dask.errors import RouterError
from altlas_dask.ops.certs import dask_security

logger = logging.getLogger(__name__)
T = TypeVar("T")


class SchedulerLink:
    """The client, whether the scheduler is reachable, and the router calls (see the module docstring)."""

    def __init__(self, client: Client, config: AltlasConfig, settings: ApiSettings) -> None:
        self.client, self.config, self.settings = client, config, settings
        self.address = client.scheduler.address if client.scheduler is not None else ""
        self.policy: dict[str, Any] = {}
        self.started = time.time()
        self.down_since: float | None = None  # wall time the scheduler connection was lost, None while connected
        self.down_reason = ""
        self.reconnects = 0
        self.on_recovered: list[Callable[[Client], None]] = []
        self._supervisor: asyncio.Task | None = None

    @staticmethod
    async def open_client(address: str, config: AltlasConfig, timeout: float) -> Client:
        return await Client(
            address,
            asynchronous=True,
            set_as_default=False,
            timeout=timeout,
            security=dask_security(config.security, "client"),
        )

    def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name="altlas-gateway-supervisor")

    async def close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        await self.client.close()

    # -- availability -----------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.down_since is None and self.client.status == "running"

    def unavailable(self, reason: str | None = None) -> ApiError:
        """The 503 every endpoint answers while the scheduler is away (or did not answer in time)."""
        reason = reason or self.down_reason or f"the connection to the scheduler at {self.address} is not ready"
        return ApiError(
            503,
            f"{reason}; retry later",
            {"Retry-After": str(self.settings.retry_after_s)},
            reason=reason,
            retry_after=self.settings.retry_after_s,
        )

    def check_available(self) -> None:
        """Raise the 503 at once (no network wait) while the scheduler connection is down."""
        if not self.connected:
            if self.down_since is None:
                self._mark_down(f"lost the connection to the scheduler at {self.address}")
            raise self.unavailable()

    def _mark_down(self, reason: str) -> None:
        if self.down_since is None:
            self.down_since = time.time()
            when = time.strftime("%H:%M:%S", time.gmtime(self.down_since))
            self.down_reason = f"{reason} (since {when} UTC); the gateway reconnects by itself"
            logger.warning("scheduler unavailable: %s", self.down_reason)

    async def _supervise(self) -> None:
        """Watch the connection; after an outage of any length, connect again (a new client if Dask gave up)."""
        while True:
            await asyncio.sleep(self.settings.watch_interval)
            try:
                status = self.client.status
                if status == "running":
                    if self.down_since is not None:
                        await self._recovered()
                    continue
                self._mark_down(f"lost the connection to the scheduler at {self.address}")
                if status in ("closing", "closed", "failed"):  # Dask's own reconnection gave up: start afresh
                    await self._new_client()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("reconnection attempt failed", exc_info=True)

    async def _new_client(self) -> None:
        try:
            client = await self.open_client(self.address, self.config, self.settings.reconnect_timeout)
        except (OSError, TimeoutError):
            return  # still away: the next round tries again
        old, self.client = self.client, client
        self.reconnects += 1
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.close(), self.settings.reconnect_timeout)

    async def _recovered(self) -> None:
        """The scheduler answers again: re-read its policy; until the router answers, stay unavailable."""
        try:
            self.policy = await self._router().policy()
        except RouterError as exc:
            self.down_reason = f"the scheduler at {self.address} is back but its router is not ready: {exc}"
            return
        except (OSError, TimeoutError):
            return
        logger.info("scheduler connection restored after %.1f s", time.time() - (self.down_since or time.time()))
        self.down_since, self.down_reason = None, ""
        for callback in self.on_recovered:
            callback(self.client)
        if self.settings.warm_up:
            asyncio.create_task(self.warm_up())

    async def warm_up(self) -> None:
        from altlas_dask.model import warm_up

        try:
            done = await self.client.run(warm_up, on_error="return")
            logger.info("model loaded on %d worker(s)", sum(1 for v in done.values() if isinstance(v, str)))
        except Exception:
            logger.warning("model warm-up failed (the first request per worker loads it instead)", exc_info=True)

    # -- the router -------------------------------------------------------------------------------------
    def _router(self) -> RouterClient:
        """Router calls on the current client, each answered within ``rpc_timeout``; no retry (a lost scheduler
        answers the 503 at once: the supervisor reconnects)."""
        return RouterClient(self.client, timeout=self.settings.rpc_timeout, retries=0)

    def router(self, user: str | None = None, is_admin: bool = False) -> RouterClient:
        """The router client acting for an API key's ``user`` (``is_admin``: an admin key, which the gateway vouches
        for: every admin key acts, and is audited, as its owner), or, without ``user``, as the gateway itself (its
        own bookkeeping: record look-ups, the GPU list; it filters per key). The 503 at once while the scheduler
        is away."""
        self.check_available()
        if user is None:
            return self._router().acting_as(self.service_name, True)
        return self._router().acting_as(user, is_admin)

    async def ask(self, reply: Awaitable[T]) -> T:
        """``reply`` (a router call from :meth:`router`, or a gather, a future's result) within ``rpc_timeout``;
        a lost, unreachable or hung scheduler answers the 503 of :meth:`unavailable` (never a hang, never a 500).
        The router's refusals raise as :class:`~altlas_dask.errors.RouterError`."""
        try:
            return await asyncio.wait_for(reply, self.settings.rpc_timeout)
        except (OSError, TimeoutError) as exc:
            if self.client.status != "running":
                self._mark_down(f"lost the connection to the scheduler at {self.address}")
                raise self.unavailable() from None
            raise self.unavailable(
                f"the scheduler at {self.address} did not answer within {self.settings.rpc_timeout:g} s"
                if isinstance(exc, TimeoutError)
                else f"the scheduler at {self.address} is unreachable ({type(exc).__name__}: {exc})"
            ) from None

    @property
    def service_name(self) -> str:
        """Who the gateway is to the router: its certificate's name (security.identity: tls), else ``gateway``."""
        return self.client.certificate_user or "gateway"
