"""The GPU router: a Dask ``SchedulerPlugin`` that places every GPU task on one GPU worker.

A task is a GPU task when it carries a ``gpu_options`` annotation (what
:class:`altlas_dask.Client` sends; ``dask.annotate(gpu_options={...})``
works too) or a ``GPU`` resource restriction. The router turns the
annotation into a :class:`~altlas_dask.strategies.TaskRequest`, checks the
user's quota, asks the strategy (a pure function) for a GPU and pins the task
to that worker. When no GPU can take the task now, or its user is at their
concurrency limit, it is held on the scheduler and released in priority and
fair-share order as capacity frees. GPU errors are retried on another GPU,
work on dead or failed GPUs is placed again, timeouts cancel, drained GPUs
take no new work, and every task's final record goes to SQLite.

Load it the Dask way: ``Scheduler(plugins=[GpuRouter(config)])`` (what
:func:`altlas_dask.start_cluster` does), ``client.register_plugin(GpuRouter())``,
or ``dask scheduler --preload scheduler_plugins.gpu_router``.
"""

from __future__ import annotations

import functools
import heapq
import logging
import random
import time
from collections import OrderedDict, deque
from dataclasses import replace
from typing import Any

import click
from distributed import SchedulerPlugin
from distributed.scheduler import Scheduler, TaskState
from tornado.ioloop import PeriodicCallback

from altlas_dask.accounting import AccountingStore
from altlas_dask.config import AltlasConfig, load_config
from altlas_dask.errors import (
    GpuOptionsError,
    GpuRetriesExhaustedError,
    GpuRoutingError,
    GpuTaskTimeoutError,
    TaskCancelledError,
)
from altlas_dask.fairshare import Entry, FairQueue
from altlas_dask.gpus.state import GpuState
from altlas_dask.options import ANNOTATION, GpuOptions
from altlas_dask.quotas import QuotaBook, utc_day
from altlas_dask.resources import GPU_RESOURCE
from altlas_dask.strategies import Decision, RoutingContext, choose
from altlas_dask.worker import METRIC_NAME, fatal_preload
from scheduler_plugins import dask_internals as dx
from scheduler_plugins.dashboard import register_page
from scheduler_plugins.metrics import RouterMetrics, publish, unpublish
from scheduler_plugins.router_api import RouterApi
from scheduler_plugins.router_state import GpuSlot, Tracked

logger = logging.getLogger(__name__)
register_page()  # the dashboard's "GPUs" page (/altlas-gpus): before any scheduler here starts its HTTP server

PLUGIN_NAME = "altlas-router"
GPU_ERROR_MARKERS = ("GpuOutOfMemoryError", "GpuFaultError", "OutOfMemoryError", "CUDA error", "CUDA out of memory")
HISTORY_SIZE = 100_000
RECENT_DECISIONS = 200
BACKFILL_SCAN = 256
PERF_EWMA = 0.2
OWN_LOAD_WINDOW_S = 2.0  # NVML utilization window (1 s) + one heartbeat
FINAL_STATUS = {"memory": "completed", "erred": "failed", "forgotten": "cancelled"}


def is_gpu_error(exception_text: str) -> bool:
    """Errors worth retrying on another GPU (OOM, device faults); user errors are not."""
    return any(marker in exception_text for marker in GPU_ERROR_MARKERS)


def compute_seconds(startstops: Any) -> float:
    """Seconds of compute in a transition's ``startstops``."""
    return sum(s["stop"] - s["start"] for s in startstops or () if s.get("action") == "compute")


class GpuRouter(RouterApi, SchedulerPlugin):
    """Places GPU tasks with the configured strategies; see the module docstring."""

    name = PLUGIN_NAME

    def __init__(self, config: AltlasConfig | None = None) -> None:
        self.config = config or load_config()
        self.policy = self.config.routing()
        self.book = QuotaBook(self.config.quotas)
        self.queue = FairQueue(self.config.quotas.fair_share)
        self.store: AccountingStore | None = None
        self.scheduler: Scheduler | None = None
        self.slots: dict[int, GpuSlot] = {}
        self.by_worker: dict[str, int] = {}
        self.seen_gpus: set[int] = set()
        self.tracked: dict[str, Tracked] = {}
        self.finished: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_DECISIONS)
        self.deadlines: list[tuple[float, str]] = []
        self.durations: dict[tuple[int, str], float] = {}
        self.counters = dict.fromkeys(("placed", "held", "retried", "failed", "timed_out", "rejected"), 0)
        self.decision_seconds: deque[float] = deque(maxlen=10_000)
        self.metrics = RouterMetrics()
        self._rr_last: int | None = None
        self._rng = random.Random(self.config.simulation.seed)
        self._snapshot: tuple[GpuState, ...] | None = None
        self._dispatch_pending = False
        self._poller: PeriodicCallback | None = None

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, scheduler: Scheduler) -> None:
        self._attach(scheduler)

    def _attach(self, scheduler: Scheduler) -> None:
        """Idempotent set-up, so ``Scheduler.add_plugin`` (which skips ``start``) works too."""
        if self.scheduler is scheduler:
            return
        self.scheduler = scheduler
        self._open_store()
        scheduler.handlers.update(self.handlers())
        dx.intercept_task_erred(scheduler, self._before_task_erred)
        for address in scheduler.workers:
            self.add_worker(scheduler, address)
        interval_ms = self.config.gpu.workload.queue_processing_interval * 1000
        self._poller = PeriodicCallback(self._poll, interval_ms)
        self._poller.start()
        publish(self)

    def _open_store(self) -> None:
        acc = self.config.accounting
        self.store = AccountingStore(acc.database, acc.flush_interval)
        for user, limits in self.store.overrides().items():
            self.book.overrides[user] = {**self.book.overrides.get(user, {}), **limits}
        today = utc_day(time.time())
        for user, (tasks, gpu_seconds) in self.store.usage_on(today).items():
            self.book.restore(user, today, tasks, gpu_seconds)
        logger.info("accounting database %s: restored usage of %d user(s)", acc.database, len(self.book.usage))

    async def close(self) -> None:
        unpublish(self)
        if self._poller is not None:
            self._poller.stop()
        if self.store is not None:
            self.store.close()

    def restart(self, scheduler: Scheduler) -> None:
        for tracked in list(self.tracked.values()):
            self._finish(tracked, "cancelled")
        self.queue = FairQueue(self.config.quotas.fair_share)
        self.deadlines.clear()

    # -- workers (GPUs) -------------------------------------------------------------------
    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        self._attach(scheduler)
        ws = scheduler.workers.get(worker)
        reported = ws.metrics.get(METRIC_NAME) if ws is not None else None
        if reported is None or worker in self.by_worker:
            return  # not a GPU worker (or already known)
        state = GpuState.from_dict(reported)
        gpu_id = state.id
        if gpu_id in self.slots:  # another node's GPU 0: give it the next free id
            gpu_id = max(self.slots) + 1
            logger.info("GPU %d of %s already taken; registered as GPU %d", state.id, worker, gpu_id)
        self.slots[gpu_id] = GpuSlot(gpu_id, worker, state, raw=reported)
        self.seen_gpus.add(gpu_id)
        self.by_worker[worker] = gpu_id
        self._snapshot = None
        self.schedule_dispatch()

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        gpu_id = self.by_worker.pop(worker, None)
        if gpu_id is not None:
            slot = self.slots.pop(gpu_id)
            log = logger.warning if slot.assigned else logger.info
            log("GPU %d (%s) left; %d task(s) will be placed again", gpu_id, worker, len(slot.assigned))
            self._snapshot = None

    def _poll(self) -> None:
        """Pick up fresh heartbeats, react to failed GPUs, expire timeouts, place waiting work."""
        scheduler = self.scheduler
        if scheduler is None:
            return
        changed = False
        for slot in list(self.slots.values()):
            ws = scheduler.workers.get(slot.worker)
            reported = ws.metrics.get(METRIC_NAME) if ws is not None else None
            if reported is None or reported is slot.raw:
                continue
            was_ok = slot.base.status == "active"
            slot.raw, slot.base = reported, GpuState.from_dict(reported)
            slot.changed()
            changed = True
            if was_ok and slot.base.status == "error" and slot.assigned:
                logger.warning(
                    "GPU %d failed (%s): re-placing its %d task(s)", slot.gpu_id, slot.base.name, len(slot.assigned)
                )
                dx.release_from(scheduler, list(slot.assigned), f"altlas-gpu-failed-{time.time()}")
        if changed:
            self._snapshot = None
        self._expire(time.time())
        if changed or self.queue:
            self._dispatch()

    def set_draining(self, gpu: int, draining: bool, reason: str) -> dict[str, Any]:
        slot = self.slots.get(gpu)
        if slot is None:
            return {"error": f"unknown GPU {gpu}; known GPUs: {sorted(self.slots)}", "code": 404}
        slot.draining, slot.drain_reason = draining, reason
        slot.changed()
        self._snapshot = None
        logger.info("GPU %d %s", gpu, f"draining ({reason})" if draining else "enabled")
        self.schedule_dispatch()
        return {"gpu": gpu, "draining": draining, "running": len(slot.assigned)}

    # -- graph updates ---------------------------------------------------------------------
    def update_graph(self, scheduler: Scheduler, *, tasks=(), **kwargs: Any) -> None:
        self._attach(scheduler)
        now = time.time()
        waiting = bool(self.queue)  # once one task must wait, the rest of the graph queues behind it
        for key in tasks:
            ts = scheduler.tasks.get(key)
            if ts is None or not self._is_gpu_task(ts):
                continue
            tracked = self._track(ts, now)
            if not waiting and tracked.error is None and self._deps_done(ts) and self.book.can_start(tracked.user):
                decision = self._decide(tracked)
                if decision.placed:
                    self._assign(tracked, ts, decision)
                    dx.pin(ts, self.slots[decision.gpu].worker, tracked.request.memory_mb)
                    continue
                waiting = decision.outcome == "wait"
            dx.hold(ts)

    @staticmethod
    def _is_gpu_task(ts: TaskState) -> bool:
        return ANNOTATION in (ts.annotations or {}) or GPU_RESOURCE in (ts.resource_restrictions or {})

    @staticmethod
    def _deps_done(ts: TaskState) -> bool:
        return all(dts.state == "memory" for dts in ts.dependencies)

    def _track(self, ts: TaskState, now: float, *, charge: bool = True) -> Tracked:
        """Start tracking a GPU task; ``charge=False`` for a recomputation (no quota charged again)."""
        raw = (ts.annotations or {}).get(ANNOTATION) or {}
        error: BaseException | None = None
        try:
            options = _parse_options(raw)
        except GpuOptionsError as exc:
            options, error = GpuOptions(user=_user_of(raw)), exc
        request = options.request(key=str(ts.key))
        dx.set_priority(ts, request.priority)
        if error is None and charge:
            error = self.book.admit(request.user, request.priority)
            if error is not None:
                self.counters["rejected"] += 1
                self.metrics.quota_rejections.labels(request.user, error.limit_name).inc()
                self.store.add_usage(request.user, utc_day(now), rejected=1)
        retries = self.policy.retry_count if options.retries is None else options.retries
        timeout = options.timeout or self.policy.timeout
        admitted = error is None and charge
        tracked = Tracked(str(ts.key), request, now, timeout, retries, admitted=admitted, error=error)
        self.tracked[ts.key] = tracked
        heapq.heappush(self.deadlines, (now + timeout, ts.key))
        return tracked

    # -- the decision ------------------------------------------------------------------------
    def snapshot(self) -> tuple[GpuState, ...]:
        if self._snapshot is None:
            self._snapshot = tuple(self.slots[gpu].view() for gpu in sorted(self.slots))
        return self._snapshot

    def _recently_used(self) -> frozenset[int]:
        """GPUs whose reported utilization may still be the router's own work (see strategies.rejection)."""
        horizon = time.monotonic() - OWN_LOAD_WINDOW_S
        return frozenset(g for g, slot in self.slots.items() if slot.assigned or slot.last_busy > horizon)

    def _performance(self, task_type: str) -> dict[int, float]:
        """Relative speed per GPU for this task type: fastest observed mean duration / this GPU's."""
        means = {g: d for (g, t), d in self.durations.items() if t == task_type and g in self.slots}
        if not means:
            return {}
        best = min(means.values())
        return {g: best / d if d > 0 else 1.0 for g, d in means.items()}

    def _decide(self, tracked: Tracked) -> Decision:
        start = time.perf_counter()
        request = tracked.request
        if request.gpu is not None and self.seen_gpus and request.gpu not in self.seen_gpus:
            decision = Decision(
                request.strategy or "specific_gpu",
                "impossible",
                None,
                f"unknown GPU {request.gpu}; this cluster has GPUs {sorted(self.seen_gpus)}",
            )
        else:
            ctx = RoutingContext(
                self.policy, self._rr_last, self._rng, self._performance(request.task_type), self._recently_used()
            )
            decision = choose(self.snapshot(), request, ctx)
        elapsed = time.perf_counter() - start
        self.decision_seconds.append(elapsed)
        self.metrics.decision_seconds.observe(elapsed)
        self.metrics.decisions.labels(decision.strategy, decision.outcome).inc()
        tracked.decision = decision
        return decision

    def _assign(self, tracked: Tracked, ts: TaskState, decision: Decision) -> None:
        slot = self.slots[decision.gpu]
        slot.assigned[ts.key] = tracked.request.memory_mb
        tracked.sharing = len(slot.assigned)
        slot.changed()
        self._snapshot = None
        self.book.started(tracked.user)
        if decision.strategy == "round_robin":
            self._rr_last = decision.gpu
        tracked.gpu, tracked.placed_at, tracked.status = decision.gpu, time.time(), "placed"
        self.counters["placed"] += 1
        self.metrics.queue_wait.labels(tracked.user, tracked.request.task_type).observe(
            tracked.placed_at - tracked.submitted
        )
        self.recent.append(
            {
                "time": tracked.placed_at,
                "key": tracked.key,
                "gpu": decision.gpu,
                "strategy": decision.strategy,
                "reason": decision.reason,
                "user": tracked.user,
                "priority": tracked.request.priority,
            }
        )

    def _unassign(self, tracked: Tracked) -> None:
        slot = self.slots.get(tracked.gpu) if tracked.gpu is not None else None
        if slot is not None and slot.assigned.pop(tracked.key, None) is not None:
            slot.last_busy = time.monotonic()
            slot.changed()
            self._snapshot = None
        if tracked.status in ("placed", "running"):
            self.book.stopped(tracked.user)
            tracked.status = "released"

    # -- task lifecycle --------------------------------------------------------------------------
    def transition(self, key, start, finish, *args, **kwargs) -> None:
        tracked = self.tracked.get(key)
        if tracked is None:
            ts = self.scheduler.tasks.get(key) if finish == "no-worker" and self.scheduler else None
            if ts is None or not self._is_gpu_task(ts):
                return
            # A finished GPU task being recomputed (its result was on a worker that died), or one
            # submitted before the router started: it is still pinned to a worker that may be gone.
            tracked = self._track(ts, time.time(), charge=False)
        if start == "processing":
            self._unassign(tracked)
            self.schedule_dispatch()
            if finish in ("memory", "erred"):
                self._record_compute(tracked, kwargs)
        if finish == "no-worker":
            self._unassign(tracked)
            tracked.gpu, tracked.status = None, "queued"
            self.counters["held"] += 1
            self.queue.push(key, tracked.user, tracked.request.priority, self.book.limits(tracked.user).weight)
            self.schedule_dispatch()
        elif finish == "processing":
            tracked.status = "running"
        elif finish in FINAL_STATUS:
            self._finish(tracked, FINAL_STATUS[finish], kwargs.get("exception_text"))
        # "released" / "waiting" are in-between states (retry, failover, cancel before "forgotten")

    def _finish(self, tracked: Tracked, status: str, error_text: str | None = None) -> None:
        self._unassign(tracked)
        if tracked.cancelled_by:
            status = "cancelled"
        elif tracked.timed_out:
            status = "timed_out"
        elif tracked.error is not None and not tracked.admitted:
            status = "rejected"
        tracked.status, tracked.finished_at = status, time.time()
        if error_text and tracked.error is None and status == "failed" and not tracked.attempts:
            tracked.attempts.append({"gpu": tracked.gpu, "error": error_text[:500]})
        self.tracked.pop(tracked.key, None)
        if tracked.admitted:
            self.book.finished(tracked.user, tracked.request.priority, tracked.gpu_seconds)
            self.store.add_usage(tracked.user, utc_day(tracked.submitted), tasks=1, gpu_seconds=tracked.gpu_seconds)
        self.store.record_task(tracked.record())
        self._count_final(tracked)
        self.finished[tracked.key] = tracked.explain()
        while len(self.finished) > HISTORY_SIZE:
            self.finished.popitem(last=False)

    def _count_final(self, tracked: Tracked) -> None:
        strategy = tracked.decision.strategy if tracked.decision else (tracked.request.strategy or "none")
        gpu = "none" if tracked.gpu is None else str(tracked.gpu)
        model = tracked.request.task_type
        self.metrics.tasks.labels(tracked.status, tracked.user, model, strategy, gpu).inc()
        if tracked.status == "completed":
            self.metrics.duration.labels(gpu, model).observe(tracked.gpu_seconds)

    def _record_compute(self, tracked: Tracked, kwargs: dict[str, Any]) -> None:
        """Meter GPU time and learn each GPU's speed per task type (hybrid's past performance)."""
        seconds = compute_seconds(kwargs.get("startstops"))
        if not seconds and tracked.placed_at is not None:
            seconds = time.time() - tracked.placed_at
        tracked.gpu_seconds += seconds
        gpu = self.by_worker.get(kwargs.get("worker") or "", tracked.gpu)
        if gpu is not None and seconds > 0:
            k = (gpu, tracked.request.task_type)
            alone = seconds / tracked.sharing  # what it would have taken without neighbours on the device
            previous = self.durations.get(k, alone)
            self.durations[k] = (1 - PERF_EWMA) * previous + PERF_EWMA * alone

    def _before_task_erred(self, ts: TaskState, msg: dict[str, Any]) -> None:
        """Retry GPU errors on another GPU (up to retries); other errors fail at once."""
        tracked = self.tracked.get(ts.key)
        if tracked is None:
            return
        text = str(msg.get("exception_text") or "")
        gpu = self.by_worker.get(msg.get("worker", ""), tracked.gpu)
        tracked.attempts.append({"gpu": gpu, "error": text[:500]})
        if not is_gpu_error(text):
            ts.retries = 0
            return
        if tracked.retries_left > 0:
            tracked.retries_left -= 1
            tracked.gpu_seconds += compute_seconds(msg.get("startstops"))
            if gpu is not None:
                tracked.request = replace(tracked.request, exclude=tracked.request.exclude | {gpu})
            ts.retries = 1
            dx.hold(ts)
            self.counters["retried"] += 1
            self.metrics.retries.labels(str(gpu)).inc()
            logger.info("task %s failed on GPU %s (%s); retrying on another GPU", ts.key, gpu, text[:120])
            return
        ts.retries = 0
        error = GpuRetriesExhaustedError(self._attempts_text(tracked))
        msg["exception"] = dx.pickle.dumps(error)
        msg["exception_text"] = repr(error)

    @staticmethod
    def _attempts_text(tracked: Tracked) -> str:
        tried = ", ".join(f"GPU {a['gpu']}: {a['error']}" for a in tracked.attempts)
        return f"task {tracked.key} failed on {len(tracked.attempts)} GPU attempt(s): {tried}"

    def cancel(self, tracked: Tracked, by: str, reason: str = "") -> None:
        """Cancel a queued or running task; its future raises :class:`TaskCancelledError`."""
        tracked.cancelled_by = by
        ts = self.scheduler.tasks.get(tracked.key)
        if ts is not None:
            why = f": {reason}" if reason else ""
            dx.fail(
                self.scheduler,
                ts,
                TaskCancelledError(f"task {tracked.key} cancelled by {by}{why}"),
                f"altlas-cancel-{time.time()}",
            )

    # -- dispatch: place held tasks in priority and fair-share order ----------------------------------
    def schedule_dispatch(self) -> None:
        if not self._dispatch_pending and self.scheduler is not None:
            self._dispatch_pending = True
            self.scheduler.loop.add_callback(self._dispatch)

    def _has_free_slot(self) -> bool:
        limit = self.policy.max_concurrent_tasks_per_gpu
        return any(s.active_requests < limit and s.status == "active" for s in self.snapshot())

    def _dispatch(self) -> None:
        self._dispatch_pending = False
        scheduler = self.scheduler
        if scheduler is None or not self.queue:
            return
        placements: list[tuple[TaskState, str, int]] = []
        failures: list[tuple[TaskState, BaseException]] = []
        skipped: list[Entry] = []
        must_wait: set[tuple] = set()  # request shapes that had to wait in this pass
        for entry in self.queue.in_order(self.book.can_start):
            ts, tracked = scheduler.tasks.get(entry.key), self.tracked.get(entry.key)
            if ts is None or tracked is None or not dx.is_held(ts) or tracked.status != "queued":
                continue  # stale: finished, cancelled or already placed
            if tracked.error is not None:
                failures.append((ts, tracked.error))
                continue
            shape = _wait_shape(tracked)
            if shape in must_wait:  # placements only take capacity: the same request must wait again
                skipped.append(entry)
                if len(skipped) >= BACKFILL_SCAN:
                    break
                continue
            decision = self._decide(tracked)
            if decision.placed:
                self.queue.served(entry)
                self._assign(tracked, ts, decision)
                placements.append((ts, self.slots[decision.gpu].worker, tracked.request.memory_mb))
            elif decision.outcome == "impossible":
                failures.append((ts, self._impossible_error(tracked, decision)))
            else:
                skipped.append(entry)
                must_wait.add(shape)
                if len(skipped) >= BACKFILL_SCAN or not self._has_free_slot():
                    break  # every GPU is full: nothing further down the queue can start either
        for entry in skipped:
            self.queue.requeue(entry)
        stimulus = f"altlas-dispatch-{time.time()}"
        dx.place(scheduler, placements, stimulus)
        for ts, error in failures:
            self.counters["failed"] += 1
            dx.fail(scheduler, ts, error, stimulus)

    def _impossible_error(self, tracked: Tracked, decision: Decision) -> BaseException:
        if tracked.attempts:
            return GpuRetriesExhaustedError(self._attempts_text(tracked) + f"; {decision.reason}")
        return GpuRoutingError(f"task {tracked.key}: {decision.reason}")

    def _expire(self, now: float) -> None:
        while self.deadlines and self.deadlines[0][0] <= now:
            _, key = heapq.heappop(self.deadlines)
            tracked = self.tracked.get(key)
            ts = self.scheduler.tasks.get(key) if self.scheduler else None
            if tracked is None or ts is None or ts.state not in ("processing", "no-worker"):
                continue
            where = f"running on GPU {tracked.gpu}" if ts.state == "processing" else "still waiting for a GPU"
            error = GpuTaskTimeoutError(f"task {key} exceeded its timeout of {tracked.timeout:g}s ({where})")
            self.counters["timed_out"] += 1
            tracked.timed_out = True
            dx.fail(self.scheduler, ts, error, f"altlas-timeout-{now}")


def _parse_options(raw: Any) -> GpuOptions:
    """GpuOptions.parse, memoized: a batch's tasks usually carry identical options."""
    try:
        key = tuple(sorted(raw.items())) if isinstance(raw, dict) else None
        hash(key)
    except TypeError:
        key = None
    return _parse_cached(key) if key is not None else GpuOptions.parse(raw)


@functools.lru_cache(maxsize=1024)
def _parse_cached(items: tuple) -> GpuOptions:
    return GpuOptions.parse(dict(items))


def _wait_shape(tracked: Tracked) -> tuple:
    """What decides whether a request can be placed at all (not where): equal shapes wait together."""
    r = tracked.request
    return (r.strategy, r.memory_mb, r.min_compute_capability, r.gpu, r.exclude)


def _user_of(raw: Any) -> str:
    """The user named in invalid options, if that part is valid (for accounting the rejection)."""
    user = raw.get("user") if isinstance(raw, dict) else None
    try:
        return GpuOptions(user=user).user if isinstance(user, str) else "anonymous"
    except ValueError:
        return "anonymous"


@click.command()
@click.option("--altlas-config", type=click.Path(), default=None, help="cluster.yaml (default $ALTLAS_CONFIG).")
async def dask_setup(scheduler: Scheduler, altlas_config: str | None) -> None:
    """``dask scheduler --preload scheduler_plugins.gpu_router [--altlas-config cluster.yaml]``."""
    # ``idempotent`` is keyword-only with no default in distributed 2026.x: without it this raised TypeError,
    # which PreloadManager.start only logs, leaving a scheduler with no router (and no altlas_* handlers).
    # tests/test_multinode.py starts `dask scheduler --preload scheduler_plugins.gpu_router` and guards this.
    try:
        router = GpuRouter(load_config(altlas_config))
        await scheduler.register_scheduler_plugin(router, name=PLUGIN_NAME, idempotent=True)
    except Exception as exc:
        fatal_preload("GPU router set-up failed", exc)
