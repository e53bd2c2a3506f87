"""The GPU router: a Dask ``SchedulerPlugin`` that places every GPU task on one GPU worker.

A task is a GPU task when it carries a ``gpu_options`` annotation (what
:class:`altlas_dask.Client` sends; ``dask.annotate(gpu_options={...})``
works too) or a ``GPU`` resource restriction. The router turns the
annotation into a :class:`~altlas_dask.strategies.TaskRequest`, asks the
strategy (a pure function) for a GPU and pins the task to that worker. When
no GPU can take the task now it is held on the scheduler and released in
priority order as capacity frees. It retries GPU errors on another GPU,
re-places work from dead or failed GPUs, enforces timeouts and drains GPUs.

Load it the Dask way: ``Scheduler(plugins=[GpuRouter(config)])`` (what
:func:`altlas_dask.start_cluster` does), ``client.register_plugin(GpuRouter())``,
or ``dask scheduler --preload scheduler_plugins.gpu_router``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import click
from distributed import SchedulerPlugin
from distributed.scheduler import Scheduler, TaskState
from tornado.ioloop import PeriodicCallback

from altlas_dask.config import AltlasConfig, load_config
from altlas_dask.errors import GpuOptionsError, GpuRetriesExhaustedError, GpuRoutingError, GpuTaskTimeoutError
from altlas_dask.gpus.state import GpuState
from altlas_dask.options import ANNOTATION, GpuOptions
from altlas_dask.resources import GPU_RESOURCE
from altlas_dask.strategies import Decision, RoutingContext, TaskRequest, choose
from altlas_dask.worker import METRIC_NAME
from scheduler_plugins import dask_internals as dx

logger = logging.getLogger(__name__)

PLUGIN_NAME = "altlas-router"
GPU_ERROR_MARKERS = ("GpuOutOfMemoryError", "GpuFaultError", "OutOfMemoryError", "CUDA error", "CUDA out of memory")
HISTORY_SIZE = 100_000
RECENT_DECISIONS = 200
BACKFILL_SCAN = 256
FINAL_STATUS = {"memory": "completed", "erred": "failed", "forgotten": "cancelled"}
PERF_EWMA = 0.2


def is_gpu_error(exception_text: str) -> bool:
    """Errors worth retrying on another GPU (OOM, device faults); user errors are not."""
    return any(marker in exception_text for marker in GPU_ERROR_MARKERS)


@dataclass
class GpuSlot:
    """One GPU worker as the router sees it: last heartbeat plus its own accounting."""

    gpu_id: int
    worker: str
    base: GpuState
    assigned: dict[str, int] = field(default_factory=dict)  # key -> memory_mb
    draining: bool = False
    drain_reason: str = ""
    _view: GpuState | None = None

    def view(self) -> GpuState:
        if self._view is None:
            base = self.base
            status = "maintenance" if self.draining and base.status == "active" else base.status
            self._view = base.with_(
                id=self.gpu_id,
                worker=self.worker,
                status=status,
                active_requests=len(self.assigned),
                memory_used_mb=max(base.memory_used_mb, sum(self.assigned.values())),
            )
        return self._view

    def changed(self) -> None:
        self._view = None


@dataclass
class Tracked:
    """A GPU task the router is responsible for."""

    key: str
    request: TaskRequest
    seq: int
    submitted: float
    timeout: float
    retries_left: int
    invalid: str | None = None
    decision: Decision | None = None
    gpu: int | None = None
    placed_at: float | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    status: str = "queued"

    def sort_key(self) -> tuple:
        return (-self.request.priority, self.seq)

    def explain(self) -> dict[str, Any]:
        r = self.request
        out: dict[str, Any] = {
            "key": self.key,
            "status": self.status,
            "user": r.user,
            "priority": r.priority,
            "task_type": r.task_type,
            "memory_mb": r.memory_mb,
            "gpu": self.gpu,
            "attempts": list(self.attempts),
            "submitted": self.submitted,
            "placed_at": self.placed_at,
            "error": self.invalid,
        }
        if self.decision is not None:
            out.update(self.decision.to_dict())
            out["gpu"] = self.gpu
        return out


class GpuRouter(SchedulerPlugin):
    """Places GPU tasks with the configured strategies; see the module docstring."""

    name = PLUGIN_NAME

    def __init__(self, config: AltlasConfig | None = None) -> None:
        self.config = config or load_config()
        self.policy = self.config.routing()
        self.scheduler: Scheduler | None = None
        self.slots: dict[int, GpuSlot] = {}
        self.by_worker: dict[str, int] = {}
        self.seen_gpus: set[int] = set()
        self.tracked: dict[str, Tracked] = {}
        self.finished: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_DECISIONS)
        self.ready: list[tuple[tuple, str]] = []
        self.deadlines: list[tuple[float, str]] = []
        self.durations: dict[tuple[int, str], float] = {}
        self.counters: dict[str, int] = {"placed": 0, "held": 0, "retried": 0, "failed": 0, "timed_out": 0}
        self.decision_seconds: deque[float] = deque(maxlen=10_000)
        self._seq = itertools.count()
        self._rr_last: int | None = None
        self._rng = random.Random(self.config.simulation.seed)
        self._snapshot: tuple[GpuState, ...] | None = None
        self._dispatch_pending = False
        self._poller: PeriodicCallback | None = None

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, scheduler: Scheduler) -> None:
        self._attach(scheduler)

    def _attach(self, scheduler: Scheduler) -> None:
        if self.scheduler is scheduler:
            return
        self.scheduler = scheduler
        scheduler.handlers.update(
            {
                "altlas_gpus": self.rpc_gpus,
                "altlas_explain": self.rpc_explain,
                "altlas_drain": self.rpc_drain,
                "altlas_enable": self.rpc_enable,
                "altlas_status": self.rpc_status,
                "altlas_policy": self.rpc_policy,
            }
        )
        dx.intercept_task_erred(scheduler, self._before_task_erred)
        for address in scheduler.workers:
            self.add_worker(scheduler, address)
        interval_ms = self.config.gpu.workload.queue_processing_interval * 1000
        self._poller = PeriodicCallback(self._poll, interval_ms)
        self._poller.start()

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.stop()

    def restart(self, scheduler: Scheduler) -> None:
        self.tracked.clear()
        self.ready.clear()
        self.deadlines.clear()
        for slot in self.slots.values():
            slot.assigned.clear()
            slot.changed()
        self._snapshot = None

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
        self.slots[gpu_id] = GpuSlot(gpu_id, worker, state)
        self.seen_gpus.add(gpu_id)
        self.by_worker[worker] = gpu_id
        self._snapshot = None
        self._schedule_dispatch()

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
            if reported is None or reported is getattr(slot, "_raw", None):
                continue
            slot._raw = reported  # type: ignore[attr-defined]
            was_ok = slot.base.status == "active"
            slot.base = GpuState.from_dict(reported)
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
        if changed or self.ready:
            self._dispatch()

    # -- graph updates ---------------------------------------------------------------------
    def update_graph(self, scheduler: Scheduler, *, tasks=(), **kwargs: Any) -> None:
        self._attach(scheduler)
        now = time.time()
        for key in tasks:
            ts = scheduler.tasks.get(key)
            if ts is None or not self._is_gpu_task(ts):
                continue
            tracked = self._track(ts, now)
            if tracked.invalid is None and not self.ready and self._deps_done(ts):
                decision = self._decide(tracked)
                if decision.placed:
                    self._assign(tracked, ts, decision)
                    dx.pin(ts, self.slots[decision.gpu].worker, tracked.request.memory_mb)
                    continue
            dx.hold(ts)

    @staticmethod
    def _is_gpu_task(ts: TaskState) -> bool:
        return ANNOTATION in (ts.annotations or {}) or GPU_RESOURCE in (ts.resource_restrictions or {})

    @staticmethod
    def _deps_done(ts: TaskState) -> bool:
        return all(dts.state == "memory" for dts in ts.dependencies)

    def _track(self, ts: TaskState, now: float) -> Tracked:
        raw = (ts.annotations or {}).get(ANNOTATION) or {}
        invalid = None
        try:
            options = GpuOptions.parse(raw)
        except GpuOptionsError as exc:
            options, invalid = GpuOptions(), str(exc)
        request = options.request(key=str(ts.key))
        dx.set_priority(ts, request.priority)
        retries = self.policy.retry_count if options.retries is None else options.retries
        timeout = options.timeout or self.policy.timeout
        tracked = Tracked(str(ts.key), request, next(self._seq), now, timeout, retries, invalid=invalid)
        self.tracked[ts.key] = tracked
        heapq.heappush(self.deadlines, (now + timeout, ts.key))
        return tracked

    # -- the decision ------------------------------------------------------------------------
    def snapshot(self) -> tuple[GpuState, ...]:
        if self._snapshot is None:
            self._snapshot = tuple(slot.view() for slot in self.slots.values())
        return self._snapshot

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
            ctx = RoutingContext(self.policy, self._rr_last, self._rng, self._performance(request.task_type))
            decision = choose(self.snapshot(), request, ctx)
        self.decision_seconds.append(time.perf_counter() - start)
        tracked.decision = decision
        return decision

    def _assign(self, tracked: Tracked, ts: TaskState, decision: Decision) -> None:
        slot = self.slots[decision.gpu]
        slot.assigned[ts.key] = tracked.request.memory_mb
        slot.changed()
        self._snapshot = None
        if decision.strategy == "round_robin":
            self._rr_last = decision.gpu
        tracked.gpu, tracked.placed_at, tracked.status = decision.gpu, time.time(), "placed"
        self.counters["placed"] += 1
        self.recent.append(
            {
                "time": tracked.placed_at,
                "key": tracked.key,
                "gpu": decision.gpu,
                "strategy": decision.strategy,
                "reason": decision.reason,
                "user": tracked.request.user,
                "priority": tracked.request.priority,
            }
        )

    def _unassign(self, key: str) -> Tracked | None:
        tracked = self.tracked.get(key)
        if tracked is not None and tracked.gpu is not None:
            slot = self.slots.get(tracked.gpu)
            if slot is not None and slot.assigned.pop(key, None) is not None:
                slot.changed()
                self._snapshot = None
        return tracked

    # -- task lifecycle --------------------------------------------------------------------------
    def transition(self, key, start, finish, *args, **kwargs) -> None:
        tracked = self.tracked.get(key)
        if tracked is None:
            return
        if start == "processing":
            self._unassign(key)
            self._schedule_dispatch()
            if finish == "memory":
                self._record_duration(tracked, kwargs)
        if finish == "no-worker":
            self._unassign(key)
            tracked.gpu, tracked.status = None, "queued"
            self.counters["held"] += 1
            heapq.heappush(self.ready, (tracked.sort_key(), key))
            self._schedule_dispatch()
        elif finish == "processing":
            tracked.status = "running"
        elif finish in FINAL_STATUS:
            self._finish(tracked, FINAL_STATUS[finish])
        # "released" / "waiting" are in-between states (retry, failover, cancel before "forgotten")

    def _finish(self, tracked: Tracked, status: str) -> None:
        self._unassign(tracked.key)
        tracked.status = status
        self.tracked.pop(tracked.key, None)
        self.finished[tracked.key] = tracked.explain()
        while len(self.finished) > HISTORY_SIZE:
            self.finished.popitem(last=False)

    def _record_duration(self, tracked: Tracked, kwargs: dict[str, Any]) -> None:
        compute = [s for s in kwargs.get("startstops") or () if s.get("action") == "compute"]
        if compute:
            seconds = compute[-1]["stop"] - compute[-1]["start"]
        elif tracked.placed_at is not None:
            seconds = time.time() - tracked.placed_at
        else:
            return
        gpu = tracked.gpu if tracked.gpu is not None else self.by_worker.get(kwargs.get("worker", ""))
        if gpu is None:
            return
        k = (gpu, tracked.request.task_type)
        previous = self.durations.get(k, seconds)
        self.durations[k] = (1 - PERF_EWMA) * previous + PERF_EWMA * seconds

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
            if gpu is not None:
                tracked.request = _excluding(tracked.request, gpu)
            ts.retries = 1
            dx.hold(ts)
            self.counters["retried"] += 1
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

    # -- dispatch: place held tasks in priority order ----------------------------------------------
    def _schedule_dispatch(self) -> None:
        if not self._dispatch_pending and self.scheduler is not None:
            self._dispatch_pending = True
            self.scheduler.loop.add_callback(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_pending = False
        scheduler = self.scheduler
        if scheduler is None or not self.ready:
            return
        stimulus = f"altlas-dispatch-{time.time()}"
        placements: list[tuple[TaskState, str, int]] = []
        failures: list[tuple[TaskState, BaseException]] = []
        skipped: list[tuple[tuple, str]] = []
        scanned = 0
        while self.ready and scanned < BACKFILL_SCAN:
            entry = heapq.heappop(self.ready)
            key = entry[1]
            ts, tracked = scheduler.tasks.get(key), self.tracked.get(key)
            if ts is None or tracked is None or not dx.is_held(ts) or tracked.status != "queued":
                continue
            if tracked.invalid is not None:
                failures.append((ts, GpuOptionsError(tracked.invalid)))
                continue
            decision = self._decide(tracked)
            if decision.placed:
                self._assign(tracked, ts, decision)
                placements.append((ts, self.slots[decision.gpu].worker, tracked.request.memory_mb))
            elif decision.outcome == "impossible":
                failures.append((ts, self._impossible_error(tracked, decision)))
            else:
                skipped.append(entry)
                scanned += 1
                if not any(
                    s.active_requests < self.policy.max_concurrent_tasks_per_gpu and s.status == "active"
                    for s in self.snapshot()
                ):
                    break  # every GPU is full: nothing further down the queue can start either
        for entry in skipped:
            heapq.heappush(self.ready, entry)
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
            dx.fail(self.scheduler, ts, error, f"altlas-timeout-{now}")

    # -- RPC handlers (``await client.scheduler.altlas_...``) ----------------------------------------
    def rpc_gpus(self) -> dict[str, Any]:
        return {
            "gpus": [s.to_dict() for s in sorted(self.snapshot(), key=lambda s: s.id)],
            "queued": sum(1 for t in self.tracked.values() if t.status == "queued"),
        }

    def rpc_explain(self, keys: list) -> dict[str, Any]:
        out = {}
        for key in keys:
            tracked = self.tracked.get(key)
            info = tracked.explain() if tracked is not None else self.finished.get(key)
            if info is not None:
                out[str(key)] = info
        return out

    def _set_drain(self, gpu: int, draining: bool, reason: str) -> dict[str, Any]:
        slot = self.slots.get(gpu)
        if slot is None:
            return {"error": f"unknown GPU {gpu}; known GPUs: {sorted(self.slots)}"}
        slot.draining, slot.drain_reason = draining, reason
        slot.changed()
        self._snapshot = None
        logger.info("GPU %d %s", gpu, f"draining ({reason})" if draining else "enabled")
        self._schedule_dispatch()
        return {"gpu": gpu, "draining": draining, "running": len(slot.assigned)}

    def rpc_drain(self, gpu: int, reason: str = "") -> dict[str, Any]:
        return self._set_drain(gpu, True, reason)

    def rpc_enable(self, gpu: int) -> dict[str, Any]:
        return self._set_drain(gpu, False, "")

    def rpc_policy(self) -> dict[str, Any]:
        return self.policy.model_dump()

    def rpc_status(self) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        for t in self.tracked.values():
            by_status[t.status] = by_status.get(t.status, 0) + 1
        return {"counters": dict(self.counters), "tracked": by_status, "recent": list(self.recent)[-50:]}


def _excluding(request: TaskRequest, gpu: int) -> TaskRequest:
    from dataclasses import replace

    return replace(request, exclude=request.exclude | {gpu})


@click.command()
@click.option("--altlas-config", type=click.Path(), default=None, help="cluster.yaml (default $ALTLAS_CONFIG).")
async def dask_setup(scheduler: Scheduler, altlas_config: str | None) -> None:
    """``dask scheduler --preload scheduler_plugins.gpu_router [--altlas-config cluster.yaml]``."""
    # ``idempotent`` is keyword-only with no default in distributed 2026.x: without it this raised TypeError,
    # which PreloadManager.start only logs, leaving a scheduler with no router (and no altlas_* handlers).
    await scheduler.register_scheduler_plugin(GpuRouter(load_config(altlas_config)), name=PLUGIN_NAME, idempotent=True)
