"""The gateway: one asynchronous altlas ``Client`` per process, and what it remembers about its requests.

The gateway holds no queue: every request becomes a Dask task at once and the router on the
scheduler places it (or holds it) exactly as for a Python client. The gateway keeps

- the futures of the tasks it submitted, by task id (= Dask key), so ``GET /task/{id}`` can return
  a result; at most ``max_tasks`` finished ones (least recently submitted dropped first, which
  releases their results on the workers; running ones are never dropped);
- batches: a batch id -> its chunk task ids (a grouping, not a queue);
- a GPU list cached for ``gpu_cache_s`` (for the 503 "no GPU" check and the batch split).

Router RPCs are called directly (``await client.scheduler.altlas_<name>(...)``): the ``Client``
helper methods wrap them in ``Client.sync`` and post-process the result, which breaks in
asynchronous mode, where ``sync`` returns an awaitable: ``gpus()``, ``tasks()`` and
``submit_batch()`` raise ``TypeError`` ('coroutine' object is not subscriptable), and ``quota()``,
``cancel_task(key)``, ... return the raw answer, an ``{"error", "code"}`` dict included, instead of
raising ``RouterError``. ``submit``/``map`` work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distributed import Future
from distributed.client import FutureCancelledError

from altlas_dask.api.calls import call
from altlas_dask.api.errors import ApiError, quota_error
from altlas_dask.api.request_batching import RequestBatcher
from altlas_dask.client.dask_internals import settled
from altlas_dask.client.gpu_client import CHUNKS_PER_GPU, Client, RouterError
from altlas_dask.config import AltlasConfig
from altlas_dask.errors import GpuRoutingError, TaskCancelledError
from altlas_dask.model import generation_size
from altlas_dask.ops.certs import dask_security
from altlas_dask.options import GpuOptions, GpuOptionsError, check_strategy
from altlas_dask.protocol import TaskStatus, api_status
from altlas_dask.scheduling.quotas import QuotaExceededError

logger = logging.getLogger(__name__)

#: Why a task the gateway submitted has no outcome: its future was dropped when the scheduler connection broke.
LOST = "lost with the scheduler: the connection to the scheduler broke before the task finished; submit it again"
#: A task answered completed whose result this gateway never fetched, and the scheduler connection then broke.
RESULT_LOST = "its result was lost with the scheduler before this gateway fetched it; submit it again"
Outcome = tuple[TaskStatus, str | None, Any]


def router_api_status(status: str | None) -> str:
    """The REST spelling (protocol.api_status) of a router status; an unknown one is passed through."""
    try:
        return api_status(status or "queued")
    except ValueError:
        return str(status)


async def future_outcome(future: Future | None) -> Outcome | None:
    """``(status, error, exception)`` of a finished future, ``None`` while it runs.

    A future that is ``cancelled`` on this client was dropped by Dask when the scheduler connection broke
    (users cancel through the router, which fails the task with ``TaskCancelledError``): it ``failed``.
    """
    if future is None or not future.done():
        return None
    if future.status == "finished":
        return TaskStatus.COMPLETED, None, None
    if future.status == "cancelled":
        return TaskStatus.FAILED, LOST, None
    try:
        exc = await future.exception()
    except Exception as err:  # the exception could not be fetched (e.g. lost with its worker)
        exc = err
    if isinstance(exc, TaskCancelledError):
        return TaskStatus.CANCELLED, str(exc), exc
    if isinstance(exc, QuotaExceededError):
        return TaskStatus.REJECTED, str(exc), exc
    return TaskStatus.FAILED, f"{type(exc).__name__}: {exc}"[:1000], exc


@dataclass
class ApiSettings:
    """Gateway tuning; the CLI exposes the useful ones."""

    max_tasks: int = 10_000  # finished tasks whose results the gateway keeps
    max_batches: int = 10_000
    placement_wait: float = 1.0  # seconds a submission waits to learn its GPU before answering "queued"
    placement_poll: float = 0.005  # seconds between batched look-ups of new tasks' placement
    gpu_cache_s: float = 0.5
    max_body_bytes: int = 4 * 1024 * 1024
    key_cache_ttl: float = 10.0
    connect_timeout: float = 30.0
    warm_up: bool = True  # load the model on every GPU worker at start-up
    rpc_timeout: float = 5.0  # seconds a router call may take before the request answers 503 (a hung scheduler)
    watch_interval: float = 0.25  # seconds between checks of the scheduler connection
    reconnect_timeout: float = 2.0  # seconds one reconnection attempt may take (then the next one starts)
    retry_after_s: int = 5  # Retry-After of a 503 while the scheduler is away


@dataclass
class TaskEntry:
    task_id: str
    user: str
    kind: str  # predict | batch | route
    workload: str
    future: Future | None
    submitted: float
    batch_id: str | None = None
    items: tuple[int, int] | None = None  # batch chunk: (first item, count)
    gpu: int | None = None  # where the router placed it, once known
    meta: dict[str, Any] = field(default_factory=dict)
    outcome: Outcome | None = None  # final once known: see :func:`outcome_of`

    async def outcome_of(self) -> Outcome | None:
        """The task's outcome (None while it runs), kept once known: what the gateway answered never changes,
        though a scheduler outage later cancels every future of its client, finished ones too."""
        if self.outcome is None:
            self.outcome = await future_outcome(self.future)
        return self.outcome

    @property
    def completed(self) -> bool:
        return self.outcome is not None and self.outcome[0] is TaskStatus.COMPLETED


@dataclass
class BatchEntry:
    batch_id: str
    user: str
    task_ids: list[str]
    sizes: list[int]
    submitted: float


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def route_key(request_id: str, user: str) -> str:
    """The task key of ``POST /route`` with a client-chosen ``request_id``: per user, so one user's ids
    neither clash with nor reveal another's."""
    return f"{request_id}@{user}"


def ascii_digits(text: str) -> bool:
    """``0``-``9`` only: ``str.isdigit`` also takes ``²`` and other digits that ``int`` refuses."""
    return text.isascii() and text.isdigit()


def parse_gpu_id(ref: str) -> int:
    text = str(ref).strip().lower().removeprefix("gpu_").removeprefix("gpu-")
    if not ascii_digits(text) or len(text) > 6:
        raise ApiError(404, f"unknown GPU {ref!r}: a GPU id is a number (0-9 digits), optionally after 'gpu_'")
    return int(text)


class PlacementWatcher:
    """Learn where just-submitted tasks went with one ``altlas_explain`` call per poll for all of them."""

    def __init__(self, gateway: Gateway, interval: float) -> None:
        self.gateway, self.interval = gateway, interval
        self.pending: dict[str, list[asyncio.Future]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="altlas-placement-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def wait(self, keys: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        """The router's record of each key it has seen within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        waiters = {}
        for key in keys:
            waiters[key] = fut = loop.create_future()
            self.pending.setdefault(key, []).append(fut)
        self._wake.set()
        try:
            await asyncio.wait(list(waiters.values()), timeout=timeout)
        finally:
            for key, fut in waiters.items():
                futs = self.pending.get(key)
                if futs is not None and fut in futs:
                    futs.remove(fut)
                    if not futs:
                        del self.pending[key]
        return {k: f.result() for k, f in waiters.items() if f.done() and not f.cancelled() and f.exception() is None}

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.interval)  # submissions of this moment share one look-up
            keys = list(self.pending)
            if not keys:
                self._wake.clear()
                continue
            try:
                found = await self.gateway.rpc("altlas_explain", keys=keys)
            except ApiError:  # the scheduler is away: the waiters time out and answer "queued" (or fail as lost)
                await asyncio.sleep(0.1)
                continue
            except Exception:
                logger.warning("placement look-up failed", exc_info=True)
                await asyncio.sleep(0.1)
                continue
            for key, info in found.items():
                for fut in self.pending.pop(key, ()):
                    if not fut.done():
                        fut.set_result(info)
            if not self.pending:
                self._wake.clear()


class Coalescer:
    """Submissions made in the same event-loop turn with the same ``gpu_options`` go out as one ``Client.map``.

    One ``update_graph`` on the scheduler for many requests instead of one each: under load this
    amortises the per-call cost of the client and of the scheduler (the router still decides per task).
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.pending: dict[GpuOptions, list[tuple[Any, dict[str, Any], str, asyncio.Future]]] = {}
        self.batches = 0

    def submit(self, fn: Any, kwargs: dict[str, Any], options: GpuOptions, key: str) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        if not self.pending:
            loop.call_soon(self._flush)
        self.pending.setdefault(options, []).append((fn, kwargs, key, waiter))
        return waiter

    def _flush(self) -> None:
        pending, self.pending = self.pending, {}
        for options, items in pending.items():
            self.batches += 1
            try:
                if len(items) == 1:
                    fn, kwargs, key, _ = items[0]
                    futures = [self.client.submit(fn, key=key, pure=False, gpu_options=options, **kwargs)]
                else:
                    futures = self.client.map(
                        call,
                        [i[0] for i in items],
                        [i[1] for i in items],
                        key=[i[2] for i in items],
                        pure=False,
                        gpu_options=options,
                    )
            except Exception as exc:
                for *_, waiter in items:
                    if not waiter.done():
                        waiter.set_exception(exc)
                continue
            for (*_, waiter), future in zip(items, futures, strict=True):
                if not waiter.done():
                    waiter.set_result(future)


class ActingAdmin(str):
    """A user name the gateway vouches is an admin (the owner of an admin API key)."""

    __slots__ = ()


class Gateway:
    """Submits GPU work for API requests and answers questions about it."""

    def __init__(self, client: Client, config: AltlasConfig, settings: ApiSettings) -> None:
        self.client, self.config, self.settings = client, config, settings
        self.tasks: OrderedDict[str, TaskEntry] = OrderedDict()
        self.batches: OrderedDict[str, BatchEntry] = OrderedDict()
        self.policy: dict[str, Any] = {}
        self.watcher = PlacementWatcher(self, settings.placement_poll)
        self.coalescer = Coalescer(client)
        batching = config.serving.batching.get("generate")
        self.request_batcher = (
            RequestBatcher(
                self._send_batch,
                lambda entry: _settled(entry.future),
                self.active_gpus,
                batching.max_batch_size,
                batching.max_wait_ms / 1000,
            )
            if batching is not None and batching.enabled and batching.max_batch_size > 1
            else None
        )
        self._gpus: list[dict[str, Any]] = []
        self._queued = 0
        self._gpus_at = -math.inf
        self._gpus_lock = asyncio.Lock()
        self.started = time.time()
        self.address = client.scheduler.address if client.scheduler is not None else ""
        self.down_since: float | None = None  # wall time the scheduler connection was lost, None while connected
        self.down_reason = ""
        self.reconnects = 0
        self._supervisor: asyncio.Task | None = None

    @classmethod
    async def connect(cls, address: str, config: AltlasConfig, settings: ApiSettings) -> Gateway:
        client = await Client(
            address,
            asynchronous=True,
            set_as_default=False,
            timeout=settings.connect_timeout,
            security=dask_security(config.security, "client"),
        )
        gateway = cls(client, config, settings)
        try:
            gateway.policy = await gateway.rpc("altlas_policy")
        except BaseException:
            await client.close()
            raise
        gateway.address = address
        gateway.watcher.start()
        gateway._supervisor = asyncio.create_task(gateway._supervise(), name="altlas-gateway-supervisor")
        if settings.warm_up:
            asyncio.create_task(gateway.warm_up())
        return gateway

    async def close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        await self.watcher.stop()
        await self.client.close()

    # -- the scheduler connection --------------------------------------------------------------------
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
            client = await Client(
                self.address,
                asynchronous=True,
                set_as_default=False,
                timeout=self.settings.reconnect_timeout,
                security=dask_security(self.config.security, "client"),
            )
        except (OSError, TimeoutError):
            return  # still away: the next round tries again
        old, self.client = self.client, client
        self.coalescer.client = client
        self.reconnects += 1
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.close(), self.settings.reconnect_timeout)

    async def _recovered(self) -> None:
        """The scheduler answers again: re-read its policy; until the router answers, stay unavailable."""
        try:
            self.policy = await self._call("altlas_policy")
        except RouterError as exc:
            self.down_reason = f"the scheduler at {self.address} is back but its router is not ready: {exc}"
            return
        except (OSError, TimeoutError):
            return
        logger.info("scheduler connection restored after %.1f s", time.time() - (self.down_since or time.time()))
        self.down_since, self.down_reason = None, ""
        self.invalidate_gpus()
        if self.settings.warm_up:
            asyncio.create_task(self.warm_up())

    async def warm_up(self) -> None:
        from altlas_dask.model import warm_up

        try:
            done = await self.client.run(warm_up, on_error="return")
            logger.info("model loaded on %d worker(s)", sum(1 for v in done.values() if isinstance(v, str)))
        except Exception:
            logger.warning("model warm-up failed (the first request per worker loads it instead)", exc_info=True)

    # -- the router --------------------------------------------------------------------------------
    async def rpc(self, handler: str, **kwargs: Any) -> Any:
        """Call a router handler; its ``{"error", "code"}`` answers raise :class:`RouterError`.

        Answers within ``rpc_timeout``: while the scheduler is away, or when it does not answer in time, the
        503 of :meth:`unavailable` (never a hang, never a 500)."""
        self.check_available()
        try:
            return await self._call(handler, **kwargs)
        except (OSError, TimeoutError) as exc:
            if self.client.status != "running":
                self._mark_down(f"lost the connection to the scheduler at {self.address}")
                raise self.unavailable() from None
            raise self.unavailable(
                f"the scheduler at {self.address} did not answer {handler} within {self.settings.rpc_timeout:g} s"
                if isinstance(exc, TimeoutError)
                else f"the scheduler at {self.address} is unreachable ({type(exc).__name__}: {exc})"
            ) from None

    async def bounded(self, awaitable: Any) -> Any:
        """``awaitable`` (a gather, a future's result) within ``rpc_timeout``, else the 503."""
        try:
            return await asyncio.wait_for(awaitable, self.settings.rpc_timeout)
        except (OSError, TimeoutError):
            raise self.unavailable(
                f"the cluster did not deliver the results within {self.settings.rpc_timeout:g} s"
            ) from None

    async def _call(self, handler: str, **kwargs: Any) -> Any:
        kwargs = self._acting(kwargs)
        result = await asyncio.wait_for(getattr(self.client.scheduler, handler)(**kwargs), self.settings.rpc_timeout)
        if result is None:
            raise RouterError(f"no GPU router on scheduler {self.client.scheduler.address}", 503)
        if isinstance(result, dict) and "error" in result:
            raise RouterError(result["error"], result.get("code", 400))
        return result

    @property
    def service_name(self) -> str:
        """Who the gateway is to the router: its certificate's name (security.identity: tls), else ``gateway``."""
        return self.client.certificate_user or "gateway"

    def acting_admin(self, user: str) -> str:
        """An admin API key's own user, marked so the router hears it as an admin this gateway authenticated:
        every admin key acts (and is audited) as its owner, whatever ``quotas.admins`` lists."""
        return ActingAdmin(user)

    def _acting(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Who a router call acts as: an admin key's owner (``admin=True``), a key's user, or, for the gateway's
        own bookkeeping (placement polls, GPU list; it filters per key itself), the gateway as an admin."""
        as_user = kwargs.get("as_user")
        if as_user is None:
            return {**kwargs, "as_user": self.service_name, "admin": True}
        if isinstance(as_user, ActingAdmin):
            return {**kwargs, "as_user": str(as_user), "admin": True}
        return kwargs

    async def gpus(self, max_age: float | None = None) -> list[dict[str, Any]]:
        """The router's GPU list (heartbeat + in-flight work + drain), at most ``max_age`` seconds old."""
        max_age = self.settings.gpu_cache_s if max_age is None else max_age
        if time.monotonic() - self._gpus_at > max_age:
            async with self._gpus_lock:
                if time.monotonic() - self._gpus_at > max_age:
                    answer = await self.rpc("altlas_gpus")
                    self._gpus, self._queued = answer["gpus"], answer.get("queued", 0)
                    self._gpus_at = time.monotonic()
        return self._gpus

    def active_gpus(self) -> int:
        """Active GPUs in the cached list (at least 1): how many batches the request batcher keeps in flight."""
        return max(1, sum(1 for g in self._gpus if g["status"] == "active"))

    def invalidate_gpus(self) -> None:
        self._gpus_at = -math.inf

    @property
    def queued(self) -> int:
        return self._queued

    async def gpu(self, ref: str) -> dict[str, Any]:
        gpu_id = parse_gpu_id(ref)
        for g in await self.gpus(max_age=0):
            if g["id"] == gpu_id:
                return g
        raise ApiError(404, f"unknown GPU {ref!r}; this cluster has GPUs {[g['id'] for g in self._gpus]}")

    # -- submission ---------------------------------------------------------------------------------
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
        if options.strategy is not None and "allowed_strategies" in self.policy:
            check_strategy(options.strategy, (*self.policy["allowed_strategies"], "single_gpu"))
        gpus = await self.gpus()
        if not any(g["status"] == "active" for g in gpus):
            states = ", ".join(f"GPU {g['id']}: {g['status']}" for g in gpus) or "no GPU worker connected"
            raise ApiError(503, f"no GPU available ({states})", {"Retry-After": "5"})
        if options.specific_gpu_id is not None and options.specific_gpu_id not in {g["id"] for g in gpus}:
            raise GpuOptionsError(
                f"invalid gpu_options.specific_gpu_id: unknown GPU {options.specific_gpu_id}; "
                f"this cluster has GPUs {sorted(g['id'] for g in gpus)}"
            )
        return options

    def _remember(self, entry: TaskEntry) -> None:
        """Keep ``entry``; over ``max_tasks``, drop the oldest finished entries (their results are released on
        the workers). Amortised O(1): a still-running oldest entry moves to the back instead of being scanned past."""
        self.tasks[entry.task_id] = entry
        for _ in range(8):
            if len(self.tasks) <= self.settings.max_tasks:
                break
            key, oldest = next(iter(self.tasks.items()))
            if oldest.future is None or oldest.future.done():
                del self.tasks[key]
            else:
                self.tasks.move_to_end(key)

    async def submit(
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
        """Submit ``fn(**kwargs)`` as task ``key``; coalesced with the submissions of the same moment."""
        key = key or new_id(workload)
        self.check_available()
        future = await self.coalescer.submit(fn, kwargs, options, key)
        task = TaskEntry(key, user, kind, workload, future, time.time(), **entry)
        self._remember(task)
        return task

    async def _send_batch(self, items: list[dict[str, Any]], context: tuple[GpuOptions, str]) -> TaskEntry:
        """The request batcher's batch: one ``generate_batch`` task, charged one request per item."""
        from altlas_dask.model import generate_batch

        options, user = context
        options = options.model_copy(update={"requests": len(items), "cost": generation_cost(options, items)})
        size = len(items)
        return await self.submit(
            generate_batch, {"items": items}, options, user=user, kind="predict", workload="generate", items=(0, size)
        )

    async def refuse_rejected(self, entry: TaskEntry, task_id: str, forget: list[str]) -> None:
        """If ``entry``'s task was refused at admission (quota: 429) or can never be placed (400), raise that as
        this request's error (as ``task_id``) and forget the ``forget`` tasks; otherwise nothing."""
        outcome = await entry.outcome_of()
        exc = outcome[2] if outcome is not None else None
        if isinstance(exc, QuotaExceededError):
            self._forget(forget)
            raise quota_error(exc, task_id=task_id, status="rejected") from None
        if isinstance(exc, GpuRoutingError | GpuOptionsError):
            self._forget(forget)
            raise ApiError(400, str(exc), task_id=task_id, status="rejected") from None

    async def placed(self, entries: list[TaskEntry]) -> dict[str, dict[str, Any]]:
        """Wait (up to ``placement_wait``) until the router has seen each task; refuse rejected ones.

        A task the router rejected at admission (quota) or can never place fails at once: that
        becomes this request's error (429, 400) and the task is forgotten.
        """
        found = await self.watcher.wait([e.task_id for e in entries], self.settings.placement_wait)
        for entry in entries:
            info = found.get(entry.task_id)
            if info is not None and info.get("gpu") is not None:
                entry.gpu = info["gpu"]
            doomed = info is not None and (
                info.get("error") or info.get("outcome") == "impossible" or info.get("status") == "rejected"
            )
            if not doomed or entry.future is None:
                continue
            settled = asyncio.ensure_future(_settled(entry.future))
            await asyncio.wait([settled], timeout=5)
            settled.cancel()
            await self.refuse_rejected(entry, entry.task_id, [e.task_id for e in entries])
        return found

    def _forget(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            entry = self.tasks.pop(task_id, None)
            if entry is not None and entry.future is not None and not entry.future.done():
                entry.future.cancel()

    def chunk_sizes(self, count: int, split: bool | None) -> list[int]:
        """Client.submit_batch's split: about ``CHUNKS_PER_GPU`` chunks per active GPU, none below the minimum."""
        split = self.policy.get("batch_split", True) if split is None else split
        minimum = int(self.policy.get("min_batch_size_per_gpu", 1))
        if not split:
            return [count]
        healthy = max(1, sum(1 for g in self._gpus if g["status"] == "active"))
        size = max(minimum, math.ceil(count / (healthy * CHUNKS_PER_GPU)))
        return [min(size, count - start) for start in range(0, count, size)]

    def remember_batch(self, batch: BatchEntry) -> None:
        self.batches[batch.batch_id] = batch
        while len(self.batches) > self.settings.max_batches:
            self.batches.popitem(last=False)

    # -- state of one task ----------------------------------------------------------------------------
    def entry(self, task_id: str, user: str, is_admin: bool) -> TaskEntry | None:
        entry = self.tasks.get(task_id)
        if entry is not None and (is_admin or entry.user == user):
            return entry
        return None

    async def settle(self, entries: list[TaskEntry], timeout: float) -> None:
        """Long poll: return as soon as every entry's future is done, or after ``timeout`` seconds (events, no
        polling). A scheduler outage ends it at once: Dask drops the futures with the connection."""
        pending = [e.future for e in entries if e.future is not None and not e.future.done()]
        if pending and timeout > 0:
            waiters = [asyncio.ensure_future(_settled(f)) for f in pending]
            try:
                await asyncio.wait(waiters, timeout=timeout)
            finally:
                for w in waiters:
                    w.cancel()

    def item(self, task_id: str) -> tuple[TaskEntry, int] | None:
        """``(chunk, index)`` for a batch item's id (``<chunk id>.<index>``, see :func:`item_id`)."""
        chunk_id, dot, index = task_id.rpartition(".")
        entry = self.tasks.get(chunk_id) if dot and ascii_digits(index) else None
        if entry is None or entry.items is None or int(index) >= entry.items[1]:
            return None
        return entry, int(index)

    async def resolve(self, task_id: str, user: str) -> str:
        """The key of ``task_id`` as ``user`` names it: a task id, or a ``request_id`` of theirs from /route."""
        if task_id in self.tasks:
            return task_id
        own = route_key(task_id, user)
        if own in self.tasks:
            return own
        return own if own in await self.explain([task_id, own]) else task_id

    async def explain(self, task_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not task_ids:
            return {}
        return await self.rpc("altlas_explain", keys=task_ids)

    async def describe(
        self, task_id: str, user: str, is_admin: bool, *, info: dict[str, Any] | None = None, result: bool = True
    ) -> dict[str, Any]:
        """Seed 004 section 3.3: ``task_id``, ``gpu_id``, ``status`` and, when completed, ``result``.

        404 when neither the gateway nor the router knows the task, or it is another user's.
        """
        item = self.item(task_id)
        if item is not None and (is_admin or item[0].user == user):
            return await self.describe_item(task_id, *item, with_result=result)
        task_id = await self.resolve(task_id, user)
        entry = self.entry(task_id, user, is_admin)
        if info is None and (entry is None or entry.future is None or not entry.future.done()):
            info = (await self.explain([task_id])).get(task_id)
        if info is not None and not is_admin and info.get("user") != user:
            info = None
        if entry is None and info is None:
            raise ApiError(404, f"unknown task {task_id!r}")
        out: dict[str, Any] = {"task_id": task_id, **await self.state(entry, info, with_result=result)}
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
        info = None
        if chunk.future is None or not chunk.future.done():
            info = (await self.explain([chunk.task_id])).get(chunk.task_id)
        state = await self.state(chunk, info, with_result=True)
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

    async def cancel_item(self, task_id: str, chunk: TaskEntry, index: int, by: str, reason: str) -> dict[str, Any]:
        """Cancel one request of a batch task: it answers ``cancelled`` and its result is dropped, its neighbours
        run on; once every request of the batch is cancelled, the batch task itself is cancelled."""
        if chunk.future is None or chunk.future.done():
            raise ApiError(409, f"task {task_id!r} already finished")
        cancelled = chunk.meta.setdefault("cancelled", {})
        cancelled[index] = f"task {task_id} cancelled by {by}" + (f": {reason}" if reason else "")
        if len(cancelled) == (chunk.items[1] if chunk.items else 1):
            with contextlib.suppress(RouterError):  # it finished meanwhile
                await self.rpc("altlas_cancel", key=chunk.task_id, as_user=chunk.user, reason=reason)
        else:  # its row stops on the worker running the batch (or when one starts it); best effort
            from altlas_dask.model.row_stops import stop_row

            try:
                await self.bounded(self.client.run(stop_row, chunk.task_id, index, on_error="return"))
            except ApiError:
                logger.warning("could not reach the workers to stop row %d of %s", index, chunk.task_id)
        return {"task_id": task_id, "status": "cancelled"}

    async def state(
        self, entry: TaskEntry | None, info: dict[str, Any] | None, *, with_result: bool = False
    ) -> dict[str, Any]:
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
        return await self.bounded(asyncio.shield(fetch))

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
            values = await self.bounded(self.client.gather([e.future for e in done], errors="raise"))
        except ApiError:
            raise
        except Exception:  # one result is gone: fetch each on its own so the others stay with their tasks
            values = await self.bounded(asyncio.gather(*(_outcome(e.future) for e in done), return_exceptions=True))
        for e, v in zip(done, values, strict=True):
            if not isinstance(v, BaseException):
                e.meta["fetch"] = fetched = asyncio.get_running_loop().create_future()
                fetched.set_result(v)
                kept[e.task_id] = v
        return kept


def _fetched(entry: TaskEntry) -> asyncio.Future | None:
    """The result :meth:`Gateway.value` or :meth:`Gateway.results` fetched for ``entry`` once, if any."""
    fetch = entry.meta.get("fetch")
    return fetch if fetch is not None and fetch.done() and not fetch.cancelled() and fetch.exception() is None else None


async def _outcome(future: Future) -> Any:
    return await future


async def _settled(future: Future) -> None:
    """Until ``future`` is finished, erred or cancelled, without fetching its result: ``await future`` would
    fetch it for every waiter, and a batch task's requests all wait on one future. (Dask's ``wait()`` needs a
    default client; the wait lies in ``altlas_dask.client.dask_internals.settled``.)"""
    with contextlib.suppress(Exception):
        await settled(future)


def item_id(chunk_id: str, index: int) -> str:
    """The task id of item ``index`` of a batch chunk: resolvable with ``GET /task/{id}`` like any task."""
    return f"{chunk_id}.{index}"


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


def item_value(value: Any) -> Any:
    """A batch item's result as the API shows it: an item that failed alone is ``{"status": "failed", "error"}``."""
    if isinstance(value, BaseException):
        return {"status": "failed", "error": f"{type(value).__name__}: {value}"[:1000]}
    return value


def shape_result(value: Any) -> Any:
    """Seed 004 section 3.3.5 ``result``: the workload's dict; a batch chunk's list becomes ``{"results": [...]}``."""
    if isinstance(value, list):
        return {"results": [item_value(v) for v in value]}
    return value


def generation_cost(options: GpuOptions, items: Sequence[Mapping[str, Any]]) -> float:
    """A generation task's ``gpu_options.cost``: per item the caller's ``cost``, else its prompt and
    ``max_length`` in characters (the shipped model's unit), summed over the task's items."""
    if options.cost is not None:
        return options.cost * len(items)
    return float(sum(generation_size(item) for item in items)) or 1.0
