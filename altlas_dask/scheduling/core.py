"""The scheduling core: every placement policy of the router, with no Dask and no I/O.

``core.handle(event)`` takes one event (a task submitted, ready, started, finished,
erred, released or forgotten; a GPU joined, left, reported, drained or enabled; a
cancel; a tick of the clock) and returns the actions the Dask adapter must carry out
(place on a GPU, hold, fail with an error, release from a GPU, retry or keep an
error) and the final records to store. Time comes in with the events; nothing here
reads a clock, so the same code runs in the scheduler, in tests and in a simulator.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import random
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import replace
from typing import Any

from altlas_dask.config import AltlasConfig, Quotas, RoutingPolicy
from altlas_dask.errors import GpuRetriesExhaustedError, GpuRoutingError, GpuTaskTimeoutError, TaskCancelledError
from altlas_dask.options import GpuOptions, GpuOptionsError
from altlas_dask.protocol import TaskStatus
from altlas_dask.scheduling import events as ev
from altlas_dask.scheduling.actions import Action, Fail, Hold, KeepError, Place, Record, Release, Retry, Usage
from altlas_dask.scheduling.affinity import AffinityBook
from altlas_dask.scheduling.candidates import decide
from altlas_dask.scheduling.estimates import Estimates, LazyPerformance
from altlas_dask.scheduling.fairqueue import FairQueue
from altlas_dask.scheduling.gpus import GpuBook, GpuSlot
from altlas_dask.scheduling.quotas import HIGH_PRIORITY, QuotaBook, utc_day
from altlas_dask.scheduling.sharing import charged_seconds
from altlas_dask.scheduling.strategies import Decision, RoutingContext, TaskRequest, build_registry, capacity
from altlas_dask.scheduling.tasks import TaskRecord

logger = logging.getLogger(__name__)

GPU_ERROR_MARKERS = ("GpuOutOfMemoryError", "GpuFaultError", "OutOfMemoryError", "CUDA error", "CUDA out of memory")
RECENT_SUBMISSIONS = 200  # the window of submissions whose memory needs strategies see as expected demand
BACKFILL_SCAN = 256  # wait shapes found waiting, at most, per dispatch pass
OWN_LOAD_WINDOW_S = 2.0  # NVML utilization window (1 s) + one heartbeat
HEALTH_CHECK_EVERY_S = 1.0
EXPLAINED_IN_FULL = 32  # the newest finished records keep every GPU's score (explain); older ones are compacted
MAX_SHAPES = 4096  # distinct wait shapes kept for sharing (then forgotten and kept again as they come)
ON_GPU = (TaskStatus.PLACED, TaskStatus.RUNNING)
HELD = (TaskStatus.QUEUED, TaskStatus.RETRYING)
Out = list[Action]


def is_gpu_error(exception_text: str) -> bool:
    """Errors worth retrying on another GPU (OOM, device faults); user errors are not."""
    return any(marker in exception_text for marker in GPU_ERROR_MARKERS)


class SchedulingCore:
    """Task lifecycle, admission (quotas, fair queue), GPU bookkeeping and health, strategies."""

    def __init__(
        self,
        policy: RoutingPolicy,
        quotas: Quotas,
        *,
        seed: int = 0,
        recent_size: int = 1000,
        timer: Callable[[], float] = time.perf_counter,
        on_decision: Callable[[Decision, float], None] | None = None,
    ) -> None:
        self.policy = policy
        self.registry = build_registry(policy.custom_strategies)
        self.now = 0.0
        self.book = QuotaBook(quotas, clock=lambda: self.now)
        self.queue = FairQueue(quotas.fair_share)
        self.admission: dict[str, dict[str, None]] = {}  # user -> keys over the priority 4-5 limit, oldest first
        self.gpus = GpuBook(policy.health, policy.max_temperature, capacity(policy))
        self.tasks: dict[str, TaskRecord] = {}
        self.recent: OrderedDict[str, TaskRecord] = OrderedDict()  # finished tasks (explained on demand), newest last
        self.recent_size = recent_size
        self._explained_in_full: deque[TaskRecord] = deque()
        self.deadlines: list[tuple[float, str]] = []
        self.estimates = Estimates()
        self.affinity = AffinityBook()
        self.counters = dict.fromkeys(
            ("placed", "held", "retried", "released", "failed", "timed_out", "rejected", "cancelled", "completed"), 0
        )
        self.placements: deque[dict[str, Any]] = deque(maxlen=200)  # the latest placement decisions
        self.decision_seconds: deque[float] = deque(maxlen=10_000)
        self.decision_counts: Counter[tuple[str, str]] = Counter()
        self.wants_dispatch = False
        self._timer = timer
        self._on_decision = on_decision  # instrumentation (Prometheus): each decision and its seconds
        self._rr_last: int | None = None
        self._placements = itertools.count()  # placement numbers: a worker starts its next tasks in this order
        self._rng = random.Random(seed)
        self._queue_seq: dict[str, int] = {}  # key -> the fair-queue entry that is current
        self.held: dict[str, tuple] = {}  # ready tasks in the queue -> their wait shape
        self._shapes: dict[tuple, tuple] = {}  # the wait shapes seen, each kept once
        self.held_memory: Counter[int] = Counter()  # memory_mb -> ready tasks in the queue that need it
        self.recent_memory: Counter[int] = Counter()  # memory_mb -> tasks among the last RECENT_SUBMISSIONS
        self._recent_window: deque[int] = deque()
        self._last_health_check = float("-inf")
        self._handlers: dict[type, Callable[[Any, Out], None]] = {
            ev.Submitted: self._submitted,
            ev.Ready: self._ready,
            ev.Started: self._started,
            ev.Finished: self._finished,
            ev.Erred: self._erred,
            ev.Released: self._released,
            ev.Forgotten: self._forgotten,
            ev.Cancel: self._cancel,
            ev.GpuJoined: self._gpu_joined,
            ev.GpuLeft: self._gpu_left,
            ev.GpuReported: self._gpu_reported,
            ev.Drain: self._drain,
            ev.Enable: self._enable,
            ev.Tick: self._tick,
        }

    @classmethod
    def from_config(cls, config: AltlasConfig, **kwargs: Any) -> SchedulingCore:
        kwargs.setdefault("seed", config.simulation.seed)
        kwargs.setdefault("recent_size", config.accounting.recent_records)
        return cls(config.routing(), config.quotas, **kwargs)

    def handle(self, event: ev.Event) -> list[Action]:
        """Apply one event; return what the adapter must do, in order."""
        self.now = max(self.now, event.now)
        out: Out = []
        self._handlers[type(event)](event, out)
        return out

    # -- tasks -----------------------------------------------------------------------------------
    def _submitted(self, e: ev.Submitted, out: Out) -> None:
        if e.key in self.tasks:
            return
        error: BaseException | None = None
        try:
            options = _parse_options(e.options)
        except GpuOptionsError as exc:
            options, error = GpuOptions(user=_user_of(e.options)), exc
        request = TaskRequest.from_options(options, key=e.key)
        admission = error is None and e.charge and options.over_limit == "wait"
        admission = admission and self.book.priority_full(request.user, request.priority)
        if error is None and e.charge:
            error = self.book.admit(request.user, request.priority, request.requests, count_priority=not admission)
            if error is not None:
                out.append(Usage(request.user, utc_day(self.now), rejected=request.requests, limit=error.limit_name))
        task = TaskRecord(
            e.key,
            request,
            submitted=self.now,
            timeout=options.timeout or self.policy.timeout,
            retries_left=self.policy.retry_count if options.retries is None else options.retries,
            cost=self.estimates.cost(request.task_type, request.cost),
            charged=error is None and e.charge,
            ready=e.ready,
            error=error,
        )
        if e.inputs:
            task.inputs = e.inputs
        self.tasks[e.key] = task
        if error is not None:
            self._finish(task, TaskStatus.REJECTED, out, fail=error)
            return
        heapq.heappush(self.deadlines, (task.deadline, e.key))
        if len(self.deadlines) > 2 * len(self.tasks) + 1024:  # drop finished tasks' entries (amortized O(1))
            self.deadlines = [(t.deadline, k) for k, t in self.tasks.items()]
            heapq.heapify(self.deadlines)
        self._remember_demand(task.request.memory_mb)
        if admission:  # over the priority 4-5 limit: held, and queued once one of the user's finishes
            task.ready, task.awaiting_admission, task.inputs_ready = False, True, e.ready
            self.admission.setdefault(task.user, {})[e.key] = None
            out.append(Hold(e.key))
            return
        if e.ready and not self.queue and self.book.can_start(task.user):
            decision = self._decide(task)
            if decision.placed:
                self._assign(task, decision, out)
                return
            if decision.outcome in ("impossible", "unhealthy"):
                self._finish(task, TaskStatus.FAILED, out, fail=self._no_gpu_error(task, decision))
                return
            task.waiting_reason = self._wait_reason(task, decision)
        out.append(Hold(e.key))
        if e.ready:
            self._enqueue(task)

    def _remember_demand(self, memory_mb: int) -> None:
        """What recent work needed (strategies keep the only GPUs that fit large tasks for them)."""
        self._recent_window.append(memory_mb)
        self.recent_memory[memory_mb] += 1
        if len(self._recent_window) > RECENT_SUBMISSIONS:
            old = self._recent_window.popleft()
            self.recent_memory[old] -= 1
            if not self.recent_memory[old]:
                del self.recent_memory[old]

    def _enqueue(self, task: TaskRecord) -> None:
        task.ready = True
        shape = _wait_shape(task)
        if len(self._shapes) > MAX_SHAPES:
            self._shapes.clear()
        shape = self._shapes.setdefault(shape, shape)  # one object per shape, not one per queued task
        self.held[task.key] = shape
        self.held_memory[task.request.memory_mb] += 1
        weight = self.book.limits(task.user).weight
        entry = self.queue.push(task.key, task.user, task.request.priority, weight, task.cost, shape)
        self._queue_seq[task.key] = entry.seq
        self.counters["held"] += 1
        self.wants_dispatch = True

    def _unhold(self, task: TaskRecord) -> None:
        """The task is no longer ready in the queue (placed, finished or its inputs were lost)."""
        shape = self.held.pop(task.key, None)
        if shape is not None:
            memory = task.request.memory_mb
            self.held_memory[memory] -= 1
            if self.held_memory[memory] <= 0:
                del self.held_memory[memory]

    def _ready(self, e: ev.Ready, out: Out) -> None:
        task = self.tasks.get(e.key)
        if task is None:
            return
        if e.inputs is not None:
            task.inputs = e.inputs
        if task.status in ON_GPU:  # taken back without a Released event first
            self._end_attempt(task, f"GPU {task.gpu} gave the task back")
        if task.awaiting_admission:
            task.inputs_ready = True
        elif not task.ready:
            self._enqueue(task)

    def _started(self, e: ev.Started, out: Out) -> None:
        """The task reached its worker: it runs if a slot is free there, else it is next up (pre-placed)."""
        task = self.tasks.get(e.key)
        if task is None or task.status != TaskStatus.PLACED:
            return
        slot = self.gpus.slots.get(task.gpu) if task.gpu is not None else None
        if (
            slot is not None
            and task.key in slot.assigned
            and len(slot.running) >= self.policy.max_concurrent_tasks_per_gpu
        ):
            slot.next_up[task.key] = task.rank
        else:
            self._run(slot, task)

    def _run(self, slot: GpuSlot | None, task: TaskRecord) -> None:
        if slot is not None and task.key in slot.assigned:
            slot.next_up.pop(task.key, None)
            task.share_mark = slot.share.advance(self.now, len(slot.running))
            slot.running.add(task.key)
        task.move(TaskStatus.RUNNING)
        task.started_at = self.now

    def _start_next(self, slot: GpuSlot) -> None:
        """A slot freed on ``slot``'s worker: it starts its next tasks in their rank order, as Dask's worker does
        (its ready heap is ordered by the task priority the adapter set from ``rank``), with no new decision."""
        limit = self.policy.max_concurrent_tasks_per_gpu
        while slot.next_up and len(slot.running) < limit:
            key = min(slot.next_up, key=slot.next_up.__getitem__)
            self._run(slot, self.tasks[key])

    def _finished(self, e: ev.Finished, out: Out) -> None:
        task = self.tasks.get(e.key)
        if task is None or task.status not in ON_GPU:
            return
        seconds = e.compute_seconds or (self.now - (task.started_at or task.placed_at or self.now))
        if e.batch is not None:  # one call ran the batch: each task is charged its share of it
            task.batch_size = e.batch[0]
            task.gpu_seconds += e.batch[1]
        else:
            task.gpu_seconds += charged_seconds(self._share_of(task), seconds, e.device_seconds)
        slot = self.gpus.slot_of(e.worker) or self.gpus.slots.get(task.gpu if task.gpu is not None else -1)
        if slot is not None:
            request = task.request
            self.estimates.learn(
                slot.gpu_id, request.task_type, seconds / task.sharing, task.sharing == 1, request.cost
            )
            slot.health.record(False, self.now)
            self.gpus.changed(slot)
        self._finish(task, TaskStatus.COMPLETED, out)

    def _share_of(self, task: TaskRecord) -> float | None:
        """The task's processor-sharing GPU seconds on its GPU since it started there (None: not running)."""
        slot = self.gpus.slots.get(task.gpu) if task.gpu is not None else None
        if slot is None or task.share_mark is None or task.key not in slot.running:
            return None
        return slot.share.advance(self.now, len(slot.running)) - task.share_mark

    def _erred(self, e: ev.Erred, out: Out) -> None:
        task = self.tasks.get(e.key)
        if task is None or task.status not in ON_GPU:
            return
        slot = self.gpus.slot_of(e.worker)
        gpu = slot.gpu_id if slot is not None else task.gpu
        text = e.error_text
        task.attempts = [*task.attempts, {"gpu": gpu, "error": text[:500]}]
        task.gpu_seconds += charged_seconds(self._share_of(task), e.compute_seconds, None)
        gpu_error = is_gpu_error(text)
        if slot is not None:
            slot.health.record(gpu_error, self.now)
            self.gpus.changed(slot)
        if gpu_error and task.retries_left > 0:
            task.retries_left -= 1
            if gpu is not None:
                task.request = replace(task.request, exclude=task.request.exclude | {gpu})
            self._end_attempt(task, f"GPU {gpu} failed it ({text[:120]}); waiting for another GPU")
            self.counters["retried"] += 1
            logger.info("task %s failed on GPU %s (%s); retrying on another GPU", e.key, gpu, text[:120])
            out.append(Retry(e.key))
            return
        replacement = GpuRetriesExhaustedError(_attempts_text(task)) if gpu_error else None
        self._finish(task, TaskStatus.FAILED, out)
        out.append(KeepError(e.key, replacement))

    def _released(self, e: ev.Released, out: Out) -> None:
        task = self.tasks.get(e.key)
        if task is None:
            return
        if task.status in ON_GPU:
            self._end_attempt(task, f"GPU {task.gpu} gave the task back (its worker left or was released)")
            self.counters["released"] += 1
        else:
            task.ready = task.inputs_ready = False  # a held task whose inputs were lost: ready again when they are
            self._unhold(task)

    def _forgotten(self, e: ev.Forgotten, out: Out) -> None:
        task = self.tasks.get(e.key)
        if task is not None:
            task.cancelled_by = task.cancelled_by or "its client (the future was released)"
            self._finish(task, TaskStatus.CANCELLED, out)

    def _cancel(self, e: ev.Cancel, out: Out) -> None:
        task = self.tasks.get(e.key)
        if task is None:
            return
        task.cancelled_by = e.by
        why = f": {e.reason}" if e.reason else ""
        self._finish(task, TaskStatus.CANCELLED, out, fail=TaskCancelledError(f"task {e.key} cancelled by {e.by}{why}"))

    # -- placing --------------------------------------------------------------------------------------
    def _decide(self, task: TaskRecord, kept: Mapping[int, int] | None = None) -> Decision:
        start = self._timer()
        request = task.request
        if request.gpu is not None and self.gpus.known and not self.gpus.ever_matched(request.gpu):
            decision = Decision(
                "specific_gpu",
                "impossible",
                None,
                f"unknown GPU {request.gpu}; this cluster has GPUs {self.gpus.describe_known()}",
            )
        else:
            ctx = RoutingContext(
                self.policy,
                self._rr_last,
                self._rng,
                LazyPerformance(self.estimates, request.task_type, self.gpus.slots),
                self._recently_used(),
                self.registry,
                self.estimates.own_seconds(request.task_type, request.cost),
                self._backlog,
                self.held_memory,
                self.recent_memory,
                self._input_bytes(task) if task.inputs else {},
                kept or {},
                self.policy.max_hold_factor > 0 and (task.hold_until is None or self.now < task.hold_until),
                self.affinity.gpus(request.affinity),
            )
            decision = decide(self.gpus, request, ctx)
        elapsed = self._timer() - start
        self.decision_seconds.append(elapsed)
        self.decision_counts[(decision.strategy, decision.outcome)] += 1
        if self._on_decision is not None:
            self._on_decision(decision, elapsed)
        task.decision = decision
        return decision

    def _wait_reason(self, task: TaskRecord, decision: Decision) -> str:
        """Why the task waits. A hold (its strategy waits for a better GPU although one has room, or for the
        GPU holding its inputs) is a reservation bounded by ``max_hold_factor`` x its expected seconds there;
        once that has passed, its strategy places it on the best GPU with room."""
        if not decision.waits_for:
            return decision.reason
        factor = self.policy.max_hold_factor
        if task.hold_until is None:
            r = task.request
            own = self.estimates.own_seconds(r.task_type, r.cost)
            expected = min(
                (own[g] for g in decision.waits_for if g in own), default=self.estimates.cost(r.task_type, r.cost)
            )
            task.hold_until = self.now + factor * expected
        left = max(task.hold_until - self.now, 0.0)
        return f"{decision.reason}; reserved: it waits at most {left:.3f}s more (max_hold_factor {factor:g})"

    def _input_bytes(self, task: TaskRecord) -> dict[int, int]:
        """GPU id -> bytes of the task's inputs held by that GPU's worker (-1: workers that are no GPU)."""
        out: dict[int, int] = {}
        for worker, nbytes in task.inputs.items():
            gpu = self.gpus.by_worker.get(worker, -1)
            out[gpu] = out.get(gpu, 0) + nbytes
        return out

    def _backlog(self, gpu: int) -> float:
        slot = self.gpus.slots.get(gpu)
        return slot.backlog_s if slot is not None else 0.0

    def _recently_used(self) -> RecentlyUsed:
        """GPUs whose reported utilization may still be the core's own work (see strategies.rejection)."""
        return RecentlyUsed(self.gpus.slots, self.now - OWN_LOAD_WINDOW_S)

    def _assign(self, task: TaskRecord, decision: Decision, out: Out) -> None:
        self._unhold(task)
        slot = self.gpus.slots[decision.gpu]
        slot.assigned[task.key] = task.request.memory_mb
        self.affinity.served(task.request.affinity, slot.gpu_id)
        task_type, cost = task.request.task_type, task.request.cost
        slot.expected_s[task.key] = self.estimates.own_seconds(task_type, cost).get(slot.gpu_id) or self.estimates.cost(
            task_type, cost
        )
        self.gpus.changed(slot)
        self.book.started(task.user)
        if decision.strategy == "round_robin":
            self._rr_last = decision.gpu
        task.move(TaskStatus.PLACED)
        task.gpu, task.placed_at, task.ready, task.waiting_reason = decision.gpu, self.now, False, ""
        task.sharing = min(len(slot.assigned), self.policy.max_concurrent_tasks_per_gpu)
        task.rank = (-task.request.priority, next(self._placements))
        task.served_cost = task.cost
        self.counters["placed"] += 1
        self.placements.append(
            {
                "time": self.now,
                "key": task.key,
                "gpu": decision.gpu,
                "strategy": decision.strategy,
                "reason": decision.reason,
                "user": task.user,
                "priority": task.request.priority,
            }
        )
        out.append(Place(task.key, decision.gpu, slot.worker, task.request.memory_mb, task.rank))

    def _unassign(self, task: TaskRecord) -> None:
        slot = self.gpus.slots.get(task.gpu) if task.gpu is not None else None
        if slot is not None:
            slot.expected_s.pop(task.key, None)
            slot.next_up.pop(task.key, None)
            if task.key in slot.running:
                slot.share.advance(self.now, len(slot.running))
                slot.running.discard(task.key)
                task.share_mark = None
                self._start_next(slot)
        if slot is not None and slot.assigned.pop(task.key, None) is not None:
            slot.last_busy = self.now
            self.gpus.changed(slot)
        if task.status in ON_GPU:
            self.book.stopped(task.user)
            if self.queue:  # a freed slot only matters to held work (an empty queue costs no dispatch pass)
                self.wants_dispatch = True

    def _end_attempt(self, task: TaskRecord, why: str) -> None:
        """The task left its GPU without finishing: it waits to be placed again."""
        self._unassign(task)
        task.move(TaskStatus.RETRYING)
        task.ready, task.waiting_reason = False, why

    def _finish(self, task: TaskRecord, status: TaskStatus, out: Out, *, fail: BaseException | None = None) -> None:
        self._unassign(task)
        self._unhold(task)
        task.move(status)
        task.finished_at = self.now
        del self.tasks[task.key]
        self._queue_seq.pop(task.key, None)
        if task.awaiting_admission:
            self.admission[task.user].pop(task.key, None)
        if task.charged:  # a freed priority 4-5 place admits a waiting task at the next tick (not mid-dispatch)
            counted = not task.awaiting_admission
            self.book.finished(task.user, task.request.priority, task.gpu_seconds, outstanding=counted)
            out.append(
                Usage(task.user, utc_day(task.submitted), tasks=task.request.requests, gpu_seconds=task.gpu_seconds)
            )
            if task.served_cost:  # charge fair share what it used, not what it was expected to use
                weight = self.book.limits(task.user).weight
                self.queue.charge(task.user, task.request.priority, weight, task.gpu_seconds - task.served_cost)
        self.counters[_COUNTER[status]] += 1
        if self.recent_size:  # 0: keep no explanations (the replay simulator)
            self.recent[task.key] = task
            self._explained_in_full.append(task)  # the newest keep their per-GPU scores; older ones are compacted
            if len(self._explained_in_full) > EXPLAINED_IN_FULL:
                self._explained_in_full.popleft().compact()
            while len(self.recent) > self.recent_size:
                self.recent.popitem(last=False)
        out.append(Record(task.record()))
        if fail is not None:
            out.append(Fail(task.key, fail))

    def _no_gpu_error(self, task: TaskRecord, decision: Decision) -> BaseException:
        if task.attempts:
            return GpuRetriesExhaustedError(_attempts_text(task) + f"; {decision.reason}")
        return GpuRoutingError(f"task {task.key}: {decision.reason}")

    def _admit_waiting(self, user: str) -> None:
        """Admit ``user``'s tasks that wait over the priority 4-5 limit, oldest first, while it has room."""
        waiting = self.admission.get(user)
        while waiting and not self.book.priority_full(user, HIGH_PRIORITY):
            task = self.tasks[next(iter(waiting))]
            del waiting[task.key]
            self.book.count_outstanding(user)
            task.awaiting_admission = False
            if task.inputs_ready:
                self._enqueue(task)
        if not waiting:
            self.admission.pop(user, None)

    def _dispatch(self, out: Out) -> None:
        """Place held tasks in priority and fair-share order while GPUs have room.

        The queue keeps one heap per wait shape and user: once a task of a shape must wait, no other task of
        that shape is looked at in this pass (placements only take capacity), so a pass costs the shapes held
        and the tasks placed, not the number queued."""
        self.wants_dispatch = False
        if not self.queue:
            return
        skipped = []
        must_wait: set[Hashable] = set()  # request shapes that had to wait in this pass
        may_start: dict[str, bool] = {}  # per user, until a placement of theirs in this pass
        kept: dict[int, int] = {}  # GPU -> the (highest) priority of a task in this pass that waits for it to drain

        def can_start(user: str) -> bool:
            known = may_start.get(user)
            if known is None:
                known = may_start[user] = self.book.can_start(user)
            return known

        def shape_open(shape: Hashable) -> bool:
            return shape not in must_wait

        for entry in self.queue.in_order(can_start, shape_open):
            task = self.tasks.get(entry.key)
            if task is None or self._queue_seq.get(entry.key) != entry.seq or not task.ready:
                continue  # stale: finished, cancelled, placed or taken back since it was queued
            decision = self._decide(task, kept)
            if decision.placed:
                self.queue.served(entry)
                self._queue_seq.pop(entry.key, None)
                self._assign(task, decision, out)
                may_start.pop(task.user, None)
            elif decision.outcome in ("impossible", "unhealthy"):
                self._finish(task, TaskStatus.FAILED, out, fail=self._no_gpu_error(task, decision))
            else:
                task.waiting_reason = self._wait_reason(task, decision)
                for g in decision.waits_for:  # the pass goes best priority first: the first to wait keeps it
                    kept.setdefault(g, task.request.priority)
                skipped.append(entry)
                must_wait.add(entry.bucket)
                if len(skipped) >= BACKFILL_SCAN or not self._has_free_slot():
                    break  # every GPU is full: nothing further down the queue can start either
        for entry in skipped:
            self.queue.requeue(entry)

    def _has_free_slot(self) -> bool:
        return bool(self.gpus.index().free_slot)

    # -- GPUs -----------------------------------------------------------------------------------------
    def _gpu_joined(self, e: ev.GpuJoined, out: Out) -> None:
        if self.gpus.slot_of(e.worker) is not None:
            self._gpu_reported(ev.GpuReported(e.worker, e.state, e.now), out)
            return
        slot = self.gpus.join(e.worker, e.state, self.now)
        if slot.gpu_id != e.state.id:
            logger.info("GPU %s of %s registered as GPU %d", e.state.uuid or e.state.id, e.worker, slot.gpu_id)
        self.wants_dispatch = True

    def _gpu_left(self, e: ev.GpuLeft, out: Out) -> None:
        slot = self.gpus.leave(e.worker)
        if slot is not None:
            log = logger.warning if slot.assigned else logger.info
            log("GPU %d (%s) left; %d task(s) will be placed again", slot.gpu_id, e.worker, len(slot.assigned))

    def _gpu_reported(self, e: ev.GpuReported, out: Out) -> None:
        slot = self.gpus.slot_of(e.worker)
        if slot is None:
            self._gpu_joined(ev.GpuJoined(e.worker, e.state, e.now), out)
            return
        failed_now = slot.base.status != "error" and e.state.status == "error"
        slot.base, slot.last_report = e.state, self.now
        if slot.unresponsive and (not slot.hung_since or self.now - slot.hung_since >= self.policy.unresponsive_after):
            logger.info("GPU %d reports again; re-admitted", slot.gpu_id)
            slot.unresponsive, slot.hung_since = "", None
        self.gpus.changed(slot)
        if failed_now and slot.assigned:
            logger.warning(
                "GPU %d failed (%s): re-placing its %d task(s)", slot.gpu_id, e.state.name, len(slot.assigned)
            )
            self._take_back(slot, f"GPU {slot.gpu_id} reported a device error", out)
        if self.queue:
            self.wants_dispatch = True

    def _take_back(self, slot: GpuSlot, why: str, out: Out) -> None:
        slot.next_up.clear()  # taken back too: none of them starts there
        for key in list(slot.assigned):
            task = self.tasks.get(key)
            if task is not None and task.status in ON_GPU:
                self._end_attempt(task, f"{why}; waiting for another GPU")
                self.counters["released"] += 1
                out.append(Release(key))

    def _drain(self, e: ev.Drain, out: Out) -> None:
        self._set_draining(e.gpu, True, e.reason)

    def _enable(self, e: ev.Enable, out: Out) -> None:
        self._set_draining(e.gpu, False, "")

    def _set_draining(self, gpu: int, draining: bool, reason: str) -> None:
        if gpu in self.gpus:
            self.gpus.drain(gpu, draining, reason)
        elif draining:
            self.gpus.drains[gpu] = reason
        else:
            self.gpus.drains.pop(gpu, None)
        logger.info("GPU %d %s", gpu, f"draining ({reason})" if draining else "enabled")
        self.wants_dispatch = True

    # -- time -----------------------------------------------------------------------------------------
    def _tick(self, e: ev.Tick, out: Out) -> None:
        self._expire(out)
        for user in list(self.admission):  # places freed since the last tick (or a limit an admin raised)
            self._admit_waiting(user)
        if self.now - self._last_health_check >= HEALTH_CHECK_EVERY_S:
            self._last_health_check = self.now
            self._check_health(out)
        if self.wants_dispatch or self.queue:
            self._dispatch(out)

    def _expire(self, out: Out) -> None:
        while self.deadlines and self.deadlines[0][0] <= self.now:
            deadline, key = heapq.heappop(self.deadlines)
            task = self.tasks.get(key)
            if task is None or task.deadline != deadline:
                continue
            error = GpuTaskTimeoutError(f"task {key} exceeded its timeout of {task.timeout:g}s ({task.where()})")
            self._finish(task, TaskStatus.TIMED_OUT, out, fail=error)

    def _check_health(self, out: Out) -> None:
        for slot in list(self.gpus.slots.values()):
            if slot.health.recover(self.now):
                logger.info(
                    "GPU %d rested %gs after going critical; trying it again",
                    slot.gpu_id,
                    self.policy.health.recovery_seconds,
                )
                self.gpus.changed(slot)
                self.wants_dispatch = True
            if slot.unresponsive:
                continue
            silent = self.now - slot.last_report
            if silent >= self.policy.unresponsive_after:
                why = f"no report for {silent:.0f}s (health_check_interval {self.policy.unresponsive_after:g}s)"
                self._mark_unresponsive(slot, why, out)
            elif (why := self._hung_task(slot)) is not None:
                slot.hung_since = self.now
                self._mark_unresponsive(slot, why, out)

    def _hung_task(self, slot: GpuSlot) -> str | None:
        """Why the GPU looks hung: nothing finished on it for ``hung_task_min_seconds`` and every task running
        there is far past its learned time (one long task beside others that finish is not a hung GPU)."""
        h = self.policy.health
        if slot.last_busy > self.now - h.hung_task_min_seconds:
            return None
        overdue = []
        for key in slot.assigned:
            if key in slot.next_up:
                continue  # waiting for a slot there, not running
            task = self.tasks.get(key)
            if task is None or task.status != TaskStatus.RUNNING or task.started_at is None:
                return None
            expected = self.estimates.expected(slot.gpu_id, task.request.task_type, task.request.cost)
            running = self.now - task.started_at
            if not expected or running <= max(h.hung_task_min_seconds, h.hung_task_factor * expected * task.sharing):
                return None
            overdue.append(
                f"task {key} has run {running:.0f}s, over {h.hung_task_factor:g}x its expected {expected:.2f}s"
            )
        return "; ".join(overdue) if overdue else None

    def _mark_unresponsive(self, slot: GpuSlot, why: str, out: Out) -> None:
        logger.warning("GPU %d is unresponsive (%s): re-placing its %d task(s)", slot.gpu_id, why, len(slot.assigned))
        slot.unresponsive = why
        self.gpus.changed(slot)
        self._take_back(slot, f"GPU {slot.gpu_id} unresponsive: {why}", out)
        self.wants_dispatch = True

    # -- commands that are not events ---------------------------------------------------------------
    def set_quota(self, user: str, limits: Mapping[str, Any]) -> Any:
        """An admin's change to ``user``'s limits (raises QuotaValueError); a raised limit may start work."""
        new = self.book.set_override(user, limits)
        self.wants_dispatch = True
        return new

    def reset(self, now: float) -> list[Action]:
        """The scheduler restarted: every live task is cancelled."""
        self.now = max(self.now, now)
        out: Out = []
        for task in list(self.tasks.values()):
            task.cancelled_by = "a scheduler restart"
            self._finish(task, TaskStatus.CANCELLED, out)
        self.queue = FairQueue(self.queue.fair_share)
        self.deadlines.clear()
        self.held.clear()
        self.held_memory.clear()
        return out


class RecentlyUsed:
    """GPUs the core has work on, or had until ``horizon``: asked one GPU at a time (no set of the pool built)."""

    __slots__ = ("horizon", "slots")

    def __init__(self, slots: Mapping[int, GpuSlot], horizon: float) -> None:
        self.slots, self.horizon = slots, horizon

    def __contains__(self, gpu: object) -> bool:
        slot = self.slots.get(gpu)  # type: ignore[call-overload]
        return slot is not None and (bool(slot.assigned) or slot.last_busy > self.horizon)


_COUNTER = {
    TaskStatus.COMPLETED: "completed",
    TaskStatus.FAILED: "failed",
    TaskStatus.TIMED_OUT: "timed_out",
    TaskStatus.CANCELLED: "cancelled",
    TaskStatus.REJECTED: "rejected",
}


def _attempts_text(task: TaskRecord) -> str:
    tried = ", ".join(f"GPU {a['gpu']}: {a['error']}" for a in task.attempts)
    return f"task {task.key} failed on {len(task.attempts)} GPU attempt(s): {tried}"


def _wait_shape(task: TaskRecord) -> tuple:
    """What decides whether a request can be placed at all (not where): equal shapes wait together."""
    r = task.request
    # where its inputs are: a task may wait for the GPU holding them while an equal one elsewhere can start
    return (r.strategy, r.memory_mb, r.min_compute_capability, r.gpu, r.exclude, frozenset(task.inputs))


def _parse_options(raw: Any) -> GpuOptions:
    """GpuOptions.parse, memoized: a batch's tasks usually carry identical options."""
    try:
        key = tuple(sorted(raw.items())) if isinstance(raw, Mapping) else None
        hash(key)
    except TypeError:
        key = None
    return _parse_cached(key) if key is not None else GpuOptions.parse(raw)


@functools.lru_cache(maxsize=1024)
def _parse_cached(items: tuple) -> GpuOptions:
    return GpuOptions.parse(dict(items))


def _user_of(raw: Any) -> str:
    """The user named in invalid options, if that part is valid (for accounting the rejection)."""
    user = raw.get("user") if isinstance(raw, Mapping) else None
    try:
        return GpuOptions(user=user).user if isinstance(user, str) else "anonymous"
    except ValueError:
        return "anonymous"
