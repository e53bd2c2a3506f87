"""Dispatch: deciding where a task runs (its strategy over the GPUs), placing it, the held queue's dispatch pass,
and the task's time on its GPU (started, finished, erred and retried, taken back)."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from altlas_dask.errors import GpuRetriesExhaustedError, GpuRoutingError
from altlas_dask.protocol import TaskStatus
from altlas_dask.scheduling import events as ev
from altlas_dask.scheduling.actions import Action, Decided, KeepError, Place, Retry
from altlas_dask.scheduling.candidates import decide
from altlas_dask.scheduling.estimates import LazyPerformance
from altlas_dask.scheduling.gpus import GpuSlot
from altlas_dask.scheduling.sharing import charged_seconds
from altlas_dask.scheduling.state import CoreState
from altlas_dask.scheduling.strategies import Decision, RoutingContext
from altlas_dask.scheduling.tasks import TaskRecord

if TYPE_CHECKING:
    from altlas_dask.scheduling.admission import Admission

logger = logging.getLogger(__name__)

GPU_ERROR_MARKERS = ("GpuOutOfMemoryError", "GpuFaultError", "OutOfMemoryError", "CUDA error", "CUDA out of memory")
BACKFILL_SCAN = 256  # wait shapes found waiting, at most, per dispatch pass
OWN_LOAD_WINDOW_S = 2.0  # NVML utilization window (1 s) + one heartbeat
ON_GPU = (TaskStatus.PLACED, TaskStatus.RUNNING)
Out = list[Action]


def is_gpu_error(exception_text: str) -> bool:
    """Errors worth retrying on another GPU (OOM, device faults); user errors are not."""
    return any(marker in exception_text for marker in GPU_ERROR_MARKERS)


class Dispatch:
    """Decisions and placements, and each attempt on a GPU. ``admission`` (set by the core) finishes tasks."""

    admission: Admission

    def __init__(self, state: CoreState) -> None:
        self.state = state

    # -- deciding ---------------------------------------------------------------------------------------
    def decide(self, task: TaskRecord, kept: Mapping[int, int] | None = None) -> Decision:
        s = self.state
        start = s.timer()
        request = task.request
        if request.gpu is not None and s.gpus.known and not s.gpus.ever_matched(request.gpu):
            decision = Decision(
                "specific_gpu",
                "impossible",
                None,
                f"unknown GPU {request.gpu}; this cluster has GPUs {s.gpus.describe_known()}",
            )
        else:
            ctx = RoutingContext(
                s.policy,
                s.rr_last,
                s.rng,
                LazyPerformance(s.estimates, request.task_type, s.gpus.slots),
                self.recently_used(),
                s.registry,
                s.estimates.own_seconds(request.task_type, request.cost),
                self._backlog,
                s.held_memory,
                s.recent_memory,
                self._input_bytes(task) if task.inputs else {},
                kept or {},
                s.policy.max_hold_factor > 0 and (task.hold_until is None or s.now < task.hold_until),
                s.affinity.gpus(request.affinity),
            )
            decision = decide(s.gpus, request, ctx)
        elapsed = s.timer() - start
        s.decision_seconds.append(elapsed)
        s.decision_counts[(decision.strategy, decision.outcome)] += 1
        s.decided.append(Decided(decision.strategy, decision.outcome, elapsed))
        task.decision = decision
        return decision

    def wait_reason(self, task: TaskRecord, decision: Decision) -> str:
        """Why the task waits. A hold (its strategy waits for a better GPU although one has room, or for the
        GPU holding its inputs) is a reservation bounded by ``max_hold_factor`` x its expected seconds there;
        once that has passed, its strategy places it on the best GPU with room."""
        if not decision.waits_for:
            return decision.reason
        s = self.state
        factor = s.policy.max_hold_factor
        if task.hold_until is None:
            r = task.request
            own = s.estimates.own_seconds(r.task_type, r.cost)
            expected = min(
                (own[g] for g in decision.waits_for if g in own), default=s.estimates.cost(r.task_type, r.cost)
            )
            task.hold_until = s.now + factor * expected
        left = max(task.hold_until - s.now, 0.0)
        return f"{decision.reason}; reserved: it waits at most {left:.3f}s more (max_hold_factor {factor:g})"

    def _input_bytes(self, task: TaskRecord) -> dict[int, int]:
        """GPU id -> bytes of the task's inputs held by that GPU's worker (-1: workers that are no GPU)."""
        out: dict[int, int] = {}
        for worker, nbytes in task.inputs.items():
            gpu = self.state.gpus.by_worker.get(worker, -1)
            out[gpu] = out.get(gpu, 0) + nbytes
        return out

    def _backlog(self, gpu: int) -> float:
        slot = self.state.gpus.slots.get(gpu)
        return slot.backlog_s if slot is not None else 0.0

    def recently_used(self) -> RecentlyUsed:
        """GPUs whose reported utilization may still be the core's own work (see strategies.rejection)."""
        return RecentlyUsed(self.state.gpus.slots, self.state.now - OWN_LOAD_WINDOW_S)

    # -- placing ----------------------------------------------------------------------------------------
    def assign(self, task: TaskRecord, decision: Decision, out: Out) -> None:
        s = self.state
        self.admission.unhold(task)
        slot = s.gpus.slots[decision.gpu]
        slot.assigned[task.key] = task.request.memory_mb
        s.affinity.served(task.request.affinity, slot.gpu_id)
        task_type, cost = task.request.task_type, task.request.cost
        slot.expected_s[task.key] = s.estimates.own_seconds(task_type, cost).get(slot.gpu_id) or s.estimates.cost(
            task_type, cost
        )
        s.gpus.changed(slot)
        s.book.started(task.user)
        if decision.strategy == "round_robin":
            s.rr_last = decision.gpu
        task.move(TaskStatus.PLACED)
        task.gpu, task.placed_at, task.ready, task.waiting_reason = decision.gpu, s.now, False, ""
        task.sharing = min(len(slot.assigned), s.policy.max_concurrent_tasks_per_gpu)
        task.rank = (-task.request.priority, next(s.placement_numbers))
        task.served_cost = task.cost
        s.counters["placed"] += 1
        s.placements.append(
            {
                "time": s.now,
                "key": task.key,
                "gpu": decision.gpu,
                "strategy": decision.strategy,
                "reason": decision.reason,
                "user": task.user,
                "priority": task.request.priority,
            }
        )
        memory, waited = task.request.memory_mb, s.now - task.submitted
        out.append(Place(task.key, decision.gpu, slot.worker, memory, task.rank, task.user, task_type, waited))

    def unassign(self, task: TaskRecord) -> None:
        s = self.state
        slot = s.gpus.slots.get(task.gpu) if task.gpu is not None else None
        if slot is not None:
            slot.expected_s.pop(task.key, None)
            slot.next_up.pop(task.key, None)
            if task.key in slot.running:
                slot.share.advance(s.now, len(slot.running))
                slot.running.discard(task.key)
                task.share_mark = None
                self._start_next(slot)
        if slot is not None and slot.assigned.pop(task.key, None) is not None:
            slot.last_busy = s.now
            s.gpus.changed(slot)
        if task.status in ON_GPU:
            s.book.stopped(task.user)
            if s.queue:  # a freed slot only matters to held work (an empty queue costs no dispatch pass)
                s.wants_dispatch = True

    def end_attempt(self, task: TaskRecord, why: str) -> None:
        """The task left its GPU without finishing: it waits to be placed again."""
        self.unassign(task)
        task.move(TaskStatus.RETRYING)
        task.ready, task.waiting_reason = False, why

    def run_pass(self, out: Out) -> None:
        """Place held tasks in priority and fair-share order while GPUs have room.

        The queue keeps one heap per wait shape and user: once a task of a shape must wait, no other task of
        that shape is looked at in this pass (placements only take capacity), so a pass costs the shapes held
        and the tasks placed, not the number queued."""
        s = self.state
        s.wants_dispatch = False
        if not s.queue:
            return
        skipped = []
        must_wait: set[Hashable] = set()  # request shapes that had to wait in this pass
        may_start: dict[str, bool] = {}  # per user, until a placement of theirs in this pass
        kept: dict[int, int] = {}  # GPU -> the (highest) priority of a task in this pass that waits for it to drain

        def can_start(user: str) -> bool:
            known = may_start.get(user)
            if known is None:
                known = may_start[user] = s.book.can_start(user)
            return known

        def shape_open(shape: Hashable) -> bool:
            return shape not in must_wait

        for entry in s.queue.in_order(can_start, shape_open):
            task = s.tasks.get(entry.key)
            if task is None or s.queue_seq.get(entry.key) != entry.seq or not task.ready:
                continue  # stale: finished, cancelled, placed or taken back since it was queued
            decision = self.decide(task, kept)
            if decision.placed:
                s.queue.served(entry)
                s.queue_seq.pop(entry.key, None)
                self.assign(task, decision, out)
                may_start.pop(task.user, None)
            elif decision.outcome in ("impossible", "unhealthy"):
                self.admission.finish(task, TaskStatus.FAILED, out, fail=no_gpu_error(task, decision))
            else:
                task.waiting_reason = self.wait_reason(task, decision)
                for g in decision.waits_for:  # the pass goes best priority first: the first to wait keeps it
                    kept.setdefault(g, task.request.priority)
                skipped.append(entry)
                must_wait.add(entry.bucket)
                if len(skipped) >= BACKFILL_SCAN or not s.gpus.index().free_slot:
                    break  # every GPU is full: nothing further down the queue can start either
        for entry in skipped:
            s.queue.requeue(entry)

    # -- on the GPU -------------------------------------------------------------------------------------
    def started(self, e: ev.Started, out: Out) -> None:
        """The task reached its worker: it runs if a slot is free there, else it is next up (pre-placed)."""
        s = self.state
        task = s.tasks.get(e.key)
        if task is None or task.status != TaskStatus.PLACED:
            return
        slot = s.gpus.slots.get(task.gpu) if task.gpu is not None else None
        full = slot is not None and len(slot.running) >= s.policy.max_concurrent_tasks_per_gpu
        if full and task.key in slot.assigned:
            slot.next_up[task.key] = task.rank
        else:
            self._run(slot, task)

    def _run(self, slot: GpuSlot | None, task: TaskRecord) -> None:
        now = self.state.now
        if slot is not None and task.key in slot.assigned:
            slot.next_up.pop(task.key, None)
            task.share_mark = slot.share.advance(now, len(slot.running))
            slot.running.add(task.key)
        task.move(TaskStatus.RUNNING)
        task.started_at = now

    def _start_next(self, slot: GpuSlot) -> None:
        """A slot freed on ``slot``'s worker: it starts its next tasks in their rank order, as Dask's worker does
        (its ready heap is ordered by the task priority the adapter set from ``rank``), with no new decision."""
        limit = self.state.policy.max_concurrent_tasks_per_gpu
        while slot.next_up and len(slot.running) < limit:
            key = min(slot.next_up, key=slot.next_up.__getitem__)
            self._run(slot, self.state.tasks[key])

    def finished(self, e: ev.Finished, out: Out) -> None:
        s = self.state
        task = s.tasks.get(e.key)
        if task is None or task.status not in ON_GPU:
            return
        seconds = e.compute_seconds or (s.now - (task.started_at or task.placed_at or s.now))
        if e.batch is not None:  # one call ran the batch: each task is charged its share of it
            task.batch_size = e.batch[0]
            task.gpu_seconds += e.batch[1]
        else:
            task.gpu_seconds += charged_seconds(self._share_of(task), seconds, e.device_seconds)
        slot = s.gpus.slot_of(e.worker) or s.gpus.slots.get(task.gpu if task.gpu is not None else -1)
        if slot is not None:
            request = task.request
            s.estimates.learn(slot.gpu_id, request.task_type, seconds / task.sharing, task.sharing == 1, request.cost)
            slot.health.record(False, s.now)
            s.gpus.changed(slot)
        self.admission.finish(task, TaskStatus.COMPLETED, out)

    def _share_of(self, task: TaskRecord) -> float | None:
        """The task's processor-sharing GPU seconds on its GPU since it started there (None: not running)."""
        slot = self.state.gpus.slots.get(task.gpu) if task.gpu is not None else None
        if slot is None or task.share_mark is None or task.key not in slot.running:
            return None
        return slot.share.advance(self.state.now, len(slot.running)) - task.share_mark

    def erred(self, e: ev.Erred, out: Out) -> None:
        s = self.state
        task = s.tasks.get(e.key)
        if task is None or task.status not in ON_GPU:
            return
        slot = s.gpus.slot_of(e.worker)
        gpu = slot.gpu_id if slot is not None else task.gpu
        text = e.error_text
        task.attempts = [*task.attempts, {"gpu": gpu, "error": text[:500]}]
        task.gpu_seconds += charged_seconds(self._share_of(task), e.compute_seconds, None)
        gpu_error = is_gpu_error(text)
        if slot is not None:
            slot.health.record(gpu_error, s.now)
            s.gpus.changed(slot)
        if gpu_error and task.retries_left > 0:
            task.retries_left -= 1
            if gpu is not None:
                task.request = replace(task.request, exclude=task.request.exclude | {gpu})
            self.end_attempt(task, f"GPU {gpu} failed it ({text[:120]}); waiting for another GPU")
            s.counters["retried"] += 1
            logger.info("task %s failed on GPU %s (%s); retrying on another GPU", e.key, gpu, text[:120])
            out.append(Retry(e.key, gpu))
            return
        replacement = GpuRetriesExhaustedError(attempts_text(task)) if gpu_error else None
        self.admission.finish(task, TaskStatus.FAILED, out)
        out.append(KeepError(e.key, replacement))


class RecentlyUsed:
    """GPUs the core has work on, or had until ``horizon``: asked one GPU at a time (no set of the pool built)."""

    __slots__ = ("horizon", "slots")

    def __init__(self, slots: Mapping[int, GpuSlot], horizon: float) -> None:
        self.slots, self.horizon = slots, horizon

    def __contains__(self, gpu: object) -> bool:
        slot = self.slots.get(gpu)  # type: ignore[call-overload]
        return slot is not None and (bool(slot.assigned) or slot.last_busy > self.horizon)


def no_gpu_error(task: TaskRecord, decision: Decision) -> BaseException:
    if task.attempts:
        return GpuRetriesExhaustedError(attempts_text(task) + f"; {decision.reason}")
    return GpuRoutingError(f"task {task.key}: {decision.reason}")


def attempts_text(task: TaskRecord) -> str:
    tried = ", ".join(f"GPU {a['gpu']}: {a['error']}" for a in task.attempts)
    return f"task {task.key} failed on {len(task.attempts)} GPU attempt(s): {tried}"
