"""``altlas_dask.Client``: a ``distributed.Client`` that speaks ``gpu_options``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import distributed
from distributed import Future

from altlas_dask.client.batch_split import plan_chunks
from altlas_dask.client.coalesce import SubmitCoalescer
from altlas_dask.client.dask_internals import SubmissionHooks
from altlas_dask.client.router_client import RouterClient
from altlas_dask.errors import IdentityError, RouterError
from altlas_dask.gpus.state import GpuState
from altlas_dask.ops.certs import common_name
from altlas_dask.options import ANNOTATION, GpuOptions, GpuOptionsError, check_strategy

CHUNKS_PER_GPU = 4  # batch split: several chunks per GPU so faster GPUs take more of the batch


def _configured_security(address: str) -> distributed.Security:
    """The client certificate cluster.yaml names for a ``tls://`` scheduler (IdentityError if it names none)."""
    from altlas_dask.config import ConfigError, load_config
    from altlas_dask.ops.certs import dask_security

    try:
        security = dask_security(load_config().security.model_copy(update={"identity": "tls"}), "client")
    except ConfigError as exc:
        raise IdentityError(
            f"the scheduler at {address} uses mutual TLS and needs a client certificate: pass "
            f"security=altlas_dask.ops.certs.client_security(DIR, NAME), or set security.client_cert, client_key and "
            f"ca_file in cluster.yaml (ALTLAS_SECURITY__CLIENT_CERT=...). {exc}",
            401,
        ) from None
    assert security is not None
    return security


def run_chunk(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """One batch chunk, run on one GPU worker."""
    return [fn(item) for item in items]


@dataclass
class Batch:
    """A batch split into chunk futures; :meth:`result` gives the results in input order."""

    futures: list[Future]
    sizes: list[int]
    gpus: list[int | None] = field(default_factory=list)  # the GPU each chunk was given to (None: the router's pick)

    def _repr_html_(self) -> str:
        from altlas_dask.client.notebook import batch_html

        return batch_html([f.status for f in self.futures], self.sizes, self.gpus or [None] * len(self.sizes))

    def __repr__(self) -> str:
        from altlas_dask.client.notebook import batch_text

        return batch_text([f.status for f in self.futures], self.sizes, self.gpus or [None] * len(self.sizes))

    def result(self, timeout: float | None = None) -> list[Any]:
        """All results, flattened in input order; ``timeout`` seconds for the whole batch."""
        deadline = None if timeout is None else time.monotonic() + timeout
        chunks = []
        for future in self.futures:  # each future knows its own client: no default client needed
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0)
            chunks.append(future.result(timeout=remaining))
        return [item for chunk in chunks for item in chunk]

    def __len__(self) -> int:
        return sum(self.sizes)


def batched_function(func: Callable[..., Any], batched: bool | Mapping[str, Any]) -> Callable[..., Any]:
    """``func`` itself, or, with ``batched``, a per-item task function running ``func(items)`` in batches."""
    from altlas_dask.worker.batching import Batched

    if batched is False or batched is None or isinstance(func, Batched):
        return func
    if batched is True:
        return Batched(func)
    if isinstance(batched, Mapping):
        unknown = set(batched) - {"max_batch_size", "max_wait_ms"}
        if unknown:
            raise ValueError(f"batched: unknown option {sorted(unknown)[0]!r}; use max_batch_size, max_wait_ms")
        return Batched(func, **batched)
    raise ValueError(f"batched must be True, False or a dict of max_batch_size/max_wait_ms (got {batched!r})")


class Client(SubmissionHooks):
    """``distributed.Client`` plus GPU routing.

    ``submit``/``map`` accept ``gpu_options`` (strategy, specific_gpu_id, task_type,
    memory_mb, priority 1-5, user, timeout, retries), validated here so a bad
    value raises :class:`GpuOptionsError` before anything is sent.
    ``gpu_defaults`` apply to every call (e.g. ``{"user": "ana"}``).

    Identity (docs/security.md): with ``security.identity: tls`` the client connects with a certificate,
    ``security=altlas_dask.ops.certs.client_security(DIR, "ana")`` or, for a ``tls://`` address and no
    ``security=``, ``security.client_cert``/``client_key``/``ca_file`` from cluster.yaml; the router then acts
    as the certificate's common name. In open mode ``gpu_defaults["user"]`` is a self-declared name.
    """

    _submissions: SubmitCoalescer | None = None

    def __init__(
        self,
        address: Any = None,
        *args: Any,
        gpu_defaults: Mapping[str, Any] | None = None,
        coalesce_ms: float | None = 0.0,
        **kwargs: Any,
    ) -> None:
        """``coalesce_ms``: ``submit`` calls reach the scheduler as one graph update per event-loop turn (0, the
        default), or per that many milliseconds; ``None`` sends each at once (see altlas_dask.client.coalesce)."""
        self.gpu_defaults = GpuOptions.parse(gpu_defaults).wire()
        if coalesce_ms is not None and not 0 <= coalesce_ms <= 1000:
            raise ValueError(f"coalesce_ms must be in 0..1000 or None (got {coalesce_ms!r})")
        if kwargs.get("security") is None and isinstance(address, str) and address.startswith("tls://"):
            kwargs["security"] = _configured_security(address)
        super().__init__(address, *args, **kwargs)
        self.certificate_user = common_name(getattr(self.security, "tls_client_cert", None))
        self.vouch_admin = False  # a delegate (console) that checked an admin key: its router calls say admin=True
        if coalesce_ms is not None:
            self._submissions = SubmitCoalescer(self, coalesce_ms / 1000)

    # -- submission coalescing (altlas_dask.client.coalesce) -------------------------------------------
    def hold_submission(self, expr: Any, keys: Any, span_metadata: Any, kwargs: dict[str, Any]) -> Any:
        coalescer = self._submissions
        if coalescer is not None and coalescer.holds(expr, keys, kwargs.get("actors")):
            kwargs.pop("internal_priority", None)
            kwargs.pop("actors", None)
            return coalescer.add(expr, keys, span_metadata, **kwargs)
        return None

    def flush_submissions(self) -> None:
        """Send the held submissions now (every other message of this client does it first)."""
        coalescer = self._submissions
        if coalescer is not None and coalescer.pending:
            coalescer.flush()

    def cancel(self, *args: Any, **kwargs: Any) -> Any:
        self.flush_submissions()
        return super().cancel(*args, **kwargs)

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        self.flush_submissions()
        return super().retry(*args, **kwargs)

    def close(self, *args: Any, **kwargs: Any) -> Any:
        self.flush_submissions()
        return super().close(*args, **kwargs)

    # -- submission ----------------------------------------------------------------------
    def gpu_options(self, gpu_options: Mapping[str, Any] | GpuOptions | None) -> GpuOptions:
        """The options a call runs with: ``gpu_defaults``, then an enclosing ``dask.annotate(gpu_options=...)``,
        then the call's own, validated (the strategy against the cluster's enabled ones)."""
        layers = [self.gpu_defaults]
        for layer in (dask.get_annotations().get(ANNOTATION), gpu_options):
            if isinstance(layer, GpuOptions):
                layer = layer.wire()
            if layer is not None and not isinstance(layer, Mapping):
                raise GpuOptionsError(f"gpu_options must be a dict, got {type(layer).__name__}")
            layers.append(layer or {})
        options = GpuOptions.parse({k: v for layer in layers for k, v in layer.items()})
        if options.strategy is not None:
            enabled = self._enabled_strategies()
            if enabled is not None:
                check_strategy(options.strategy, enabled)
        return options

    _strategies: tuple[str, ...] | None = None

    def _enabled_strategies(self) -> tuple[str, ...] | None:
        """The cluster's enabled strategies, asked once per client; None where they cannot be asked (an
        asynchronous client, no router): the router's own check answers then."""
        if self._strategies is None and not self.asynchronous:
            try:
                policy = self._policy()
            except RouterError:
                return None
            self._strategies = (*policy["allowed_strategies"], "single_gpu")
        return self._strategies

    def _routed(self, method: Callable[..., Any], gpu_options: Any, kwargs: dict[str, Any]) -> Any:
        if kwargs.get("workers") is not None:
            raise GpuOptionsError("use gpu_options={'specific_gpu_id': N}, not workers=: the router places GPU tasks")
        options = self.gpu_options(gpu_options)
        kwargs.setdefault("priority", options.priority)
        with dask.annotate(**{ANNOTATION: options.wire()}):
            return method(**kwargs)

    def _graph(self, method: Callable[..., Any], gpu_options: Any, kwargs: dict[str, Any]) -> Any:
        """A collection's graph: GPU tasks when the call or an enclosing ``dask.annotate`` gives ``gpu_options``."""
        if gpu_options is None and ANNOTATION not in dask.get_annotations():
            return method(**kwargs)
        return self._routed(method, gpu_options, kwargs)

    def compute(self, collections, *args, gpu_options=None, **kwargs):  # type: ignore[override]
        """``distributed.Client.compute``; with ``gpu_options`` every task of the graph is routed to a GPU."""
        return self._graph(lambda **kw: super(Client, self).compute(collections, *args, **kw), gpu_options, kwargs)

    def persist(self, collections, *args, gpu_options=None, **kwargs):  # type: ignore[override]
        """``distributed.Client.persist``; with ``gpu_options`` every task of the graph is routed to a GPU."""
        return self._graph(lambda **kw: super(Client, self).persist(collections, *args, **kw), gpu_options, kwargs)

    def submit(self, func, *args, gpu_options=None, batched=False, **kwargs) -> Future:  # type: ignore[override]
        """``distributed.Client.submit`` with ``gpu_options``; ``batched=True`` (or ``{"max_batch_size": n,
        "max_wait_ms": ms}``): ``func`` takes a list, and this call's item shares one ``func(items)`` call with
        the items of other such tasks running on the same GPU worker at the moment (see altlas_dask.worker.batching)."""
        func = batched_function(func, batched)
        return self._routed(lambda **kw: super(Client, self).submit(func, *args, **kw), gpu_options, kwargs)

    def map(self, func, *iterables, gpu_options=None, batched=False, **kwargs) -> list[Future]:  # type: ignore[override]
        """``distributed.Client.map`` with ``gpu_options`` and ``batched`` (as :meth:`submit`)."""
        func = batched_function(func, batched)
        return self._routed(lambda **kw: super(Client, self).map(func, *iterables, **kw), gpu_options, kwargs)

    def submit_batch(
        self,
        items: Iterable[Any],
        fn: Callable[[Any], Any],
        *,
        batch_split: bool | None = None,
        min_batch_size_per_gpu: int | None = None,
        gpu_options: Mapping[str, Any] | None = None,
    ) -> Batch:
        """Run ``fn`` over ``items`` split across GPUs; ``Batch.result()`` keeps input order.

        With ``batch_split`` the batch is cut into about ``CHUNKS_PER_GPU`` chunks per
        healthy GPU, never smaller than ``min_batch_size_per_gpu``; without it the
        whole batch is one task on one GPU. Defaults come from ``gpu.multi_gpu``.
        ``gpu_options.cost`` is per item (1 without it): each chunk costs its items' sum, so the router
        learns seconds per item on each GPU, and the next split follows those speeds (``altlas_speeds``).
        """
        self._synchronous_only("submit_batch", "client.map over your own chunks")
        items = list(items)
        options = self.gpu_options(gpu_options)
        policy = self._policy()
        split = policy["batch_split"] if batch_split is None else batch_split
        split = split if options.batch_split is None else options.batch_split
        minimum = min_batch_size_per_gpu or policy["min_batch_size_per_gpu"]
        if minimum < 1:
            raise GpuOptionsError(f"min_batch_size_per_gpu must be >= 1 (got {minimum})")
        if not items:
            return Batch([], [])
        plan: list[tuple[int | None, int]] = [(None, len(items))]
        if split and options.specific_gpu_id is None:
            learned = self._learned_speeds(options.task_type)
            plan = plan_chunks(len(items), self._gpu_rows(), learned, minimum, CHUNKS_PER_GPU)
        futures, start = [], 0
        for gpu, size in plan:
            chunk = items[start : start + size]
            update: dict[str, Any] = {"cost": size * (options.cost or 1.0)}  # gpu_options.cost is per item here
            if gpu is not None:
                update["specific_gpu_id"] = gpu
            chunk_options = options.model_copy(update=update)
            futures.append(self.submit(run_chunk, fn, chunk, gpu_options=chunk_options, pure=False))
            start += size
        return Batch(futures, [n for _, n in plan], [g for g, _ in plan])

    # -- the router (altlas_dask.client.router_client) ----------------------------------------------
    @property
    def router(self) -> RouterClient:
        """The router's RPCs on this client's connection, acting as :attr:`user` (vouched an admin by a delegate
        that set :attr:`vouch_admin`). Asynchronous: ``await client.router.tasks()``."""
        return RouterClient(self, user=self.user, admin=self.vouch_admin)

    def _ask(self, call: Callable[[RouterClient], Awaitable[Any]], pick: Callable[[Any], Any] | None = None) -> Any:
        """``call(self.router)``'s answer, shaped by ``pick``, through ``Client.sync`` (so an awaitable on an
        asynchronous client, like every ``distributed.Client`` method)."""
        router = self.router

        async def ask() -> Any:
            answer = await call(router)
            return answer if pick is None else pick(answer)

        return self.sync(ask)

    def _synchronous_only(self, method: str, instead: str) -> None:
        if self.asynchronous:
            raise RuntimeError(
                f"Client.{method} polls and needs a synchronous client; with asynchronous=True use {instead}"
            )

    @property
    def user(self) -> str:
        """Who this client acts as: ``gpu_defaults["user"]``, else its certificate's name, else ``anonymous``."""
        return self.gpu_defaults.get("user") or self.certificate_user or "anonymous"

    def _policy(self) -> dict[str, Any]:
        return self._ask(lambda r: r.policy())

    def _gpu_rows(self) -> list[dict[str, Any]]:
        """The router's GPU dicts as they come (every field, including ones GpuState does not know)."""
        return self._ask(lambda r: r.gpus(), lambda reply: reply["gpus"])

    def _learned_speeds(self, task_type: str) -> dict[int, float]:
        """Relative speed per GPU the router learned for ``task_type`` (empty where it offers none)."""
        try:
            return self._ask(lambda r: r.speeds(task_type))
        except RouterError:  # a router without the handler: the split uses the GPUs' own figures
            return {}

    def gpus_frame(self) -> Any:
        """:meth:`gpus` as a pandas DataFrame (one row per GPU, with its condition and the reason)."""
        import pandas as pd

        from altlas_dask.client.notebook import gpu_records

        return pd.DataFrame(gpu_records(self._gpu_rows())).set_index("gpu")

    console_url: str | None = None  # shown in the notebook table; default $ALTLAS_CONSOLE_URL

    def _repr_html_(self) -> str:
        """In a notebook: the GPUs (condition, memory, utilization) and links to the GPU page and the console."""
        import os

        from altlas_dask.client.notebook import gpus_html

        try:
            if self.asynchronous or self.status != "running":
                raise RuntimeError(self.status)
            rows = self._gpu_rows()
        except Exception:  # not connected, or no router: Dask's own widget
            return super()._repr_html_()
        dashboard = self.dashboard_link
        links = {
            "GPU page": dashboard.replace("/status", "/altlas-gpus") if dashboard else None,
            "dashboard": dashboard,
            "console": self.console_url or os.environ.get("ALTLAS_CONSOLE_URL"),
        }
        title = f"altlas_dask.Client as {self.user!r} · scheduler {self.scheduler.address}"
        return gpus_html(rows, title, links)

    def gpus(self) -> list[GpuState]:
        """Live state of every GPU as the router sees it (heartbeat + in-flight work + drain)."""
        return self._ask(lambda r: r.gpus(), lambda reply: [GpuState.from_dict(g) for g in reply["gpus"]])

    def explain(self, future: Future | str, wait: float = 5.0) -> dict[str, Any]:
        """The routing decision for a task: GPU, strategy, reason, per-GPU scores/rejections, attempts."""
        self._synchronous_only("explain", "await client.explain_many([future])")
        key = future.key if isinstance(future, Future) else future
        deadline = time.monotonic() + wait
        while True:
            found = self._ask(lambda r: r.explain([key]))
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not found:
            raise KeyError(f"the router has no record of task {key!r} (not a GPU task?)")
        return next(iter(found.values()))

    def explain_many(self, futures: Iterable[Future | str]) -> dict[str, dict[str, Any]]:
        """:meth:`explain` for many tasks in one call: key -> decision (unknown keys are left out)."""
        keys = [f.key if isinstance(f, Future) else f for f in futures]
        return self._ask(lambda r: r.explain(keys))

    def drain_gpu(self, gpu: int, reason: str = "") -> dict[str, Any]:
        """No new work on ``gpu``; running work finishes."""
        return self._ask(lambda r: r.drain(gpu, reason))

    def enable_gpu(self, gpu: int) -> dict[str, Any]:
        """Undo :meth:`drain_gpu`."""
        return self._ask(lambda r: r.enable(gpu))

    def router_status(self) -> dict[str, Any]:
        """Counters (placed, held, retried, failed, timed out) and the last routing decisions (yours; admins: all)."""
        return self._ask(lambda r: r.status())

    # -- users, quotas, accounting ------------------------------------------------------------
    def tasks(
        self, user: str | None = None, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Live and recent tasks: your own, or anyone's if this client's user is an admin."""
        return self._ask(lambda r: r.tasks(user, status, limit, offset), lambda reply: reply["tasks"])

    def cancel_task(self, task: Future | str, reason: str = "") -> dict[str, Any]:
        """Cancel one of your tasks (admins: anyone's); its future raises ``TaskCancelledError``."""
        if not isinstance(task, Future) or self.asynchronous:
            key = task.key if isinstance(task, Future) else task
            return self._ask(lambda r: r.cancel(key, reason))
        deadline = time.monotonic() + 5.0
        while True:  # a just-submitted future may not have reached the scheduler yet
            try:
                return self._ask(lambda r: r.cancel(task.key, reason))
            except RouterError as exc:
                if exc.code != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def quota(self, user: str | None = None) -> dict[str, Any]:
        """Limits, used, remaining and reset times (seed 001 section 6.3.4 shape)."""
        return self._ask(lambda r: r.quota(user or self.user))

    def set_quota(self, user: str, **limits: Any) -> dict[str, Any]:
        """Admin only: change ``user``'s limits (concurrent_requests, gpu_time_minutes, ...); kept on restart."""
        return self._ask(lambda r: r.set_quota(user, limits))

    def usage(self, user: str | None = None, since: str | None = None) -> list[dict[str, Any]]:
        """Per-day usage rows (tasks, gpu_seconds, rejected) from the accounting database."""
        return self._ask(lambda r: r.usage(user or self.user, since), lambda reply: reply["days"])

    def records(
        self, user: str | None = None, status: str | None = None, since: float | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Final task records from the accounting database, newest first."""
        return self._ask(lambda r: r.records(user, status, since, limit), lambda reply: reply["records"])
