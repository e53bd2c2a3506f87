"""Admission: a task enters (options checked, quotas charged, the priority 4-5 limit), waits in the fair queue,
and leaves (its final record, its usage, its fair-share correction), by finishing, a timeout or a cancel."""

from __future__ import annotations

import functools
import heapq
from collections.abc import Mapping
from typing import Any

from altlas_dask.errors import GpuTaskTimeoutError, TaskCancelledError
from altlas_dask.options import GpuOptions, GpuOptionsError
from altlas_dask.protocol import TaskStatus
from altlas_dask.scheduling import events as ev
from altlas_dask.scheduling.actions import Action, Fail, Hold, QuotaChanged, Record, Usage
from altlas_dask.scheduling.dispatch import ON_GPU, Dispatch, no_gpu_error
from altlas_dask.scheduling.quotas import HIGH_PRIORITY, utc_day
from altlas_dask.scheduling.state import CoreState
from altlas_dask.scheduling.strategies import TaskRequest
from altlas_dask.scheduling.tasks import TaskRecord

RECENT_SUBMISSIONS = 200  # the window of submissions whose memory needs strategies see as expected demand
EXPLAINED_IN_FULL = 16  # the newest finished records keep every GPU's score (explain); older ones are compacted
MAX_SHAPES = 4096  # distinct wait shapes kept for sharing (then forgotten and kept again as they come)
Out = list[Action]

_COUNTER = {
    TaskStatus.COMPLETED: "completed",
    TaskStatus.FAILED: "failed",
    TaskStatus.TIMED_OUT: "timed_out",
    TaskStatus.CANCELLED: "cancelled",
    TaskStatus.REJECTED: "rejected",
}


class Admission:
    """Tasks in and out, quotas and the fair queue; placing is :class:`Dispatch`'s."""

    def __init__(self, state: CoreState, dispatch: Dispatch) -> None:
        self.state, self.dispatch = state, dispatch

    def submitted(self, e: ev.Submitted, out: Out) -> None:
        s = self.state
        if e.key in s.tasks:
            return
        error: BaseException | None = None
        try:
            options = _parse_options(e.options)
        except GpuOptionsError as exc:
            options, error = GpuOptions(user=_user_of(e.options)), exc
        request = TaskRequest.from_options(options, key=e.key)
        over_limit = error is None and e.charge and options.over_limit == "wait"
        over_limit = over_limit and s.book.priority_full(request.user, request.priority)
        if error is None and e.charge:
            error = s.book.admit(request.user, request.priority, request.requests, count_priority=not over_limit)
            if error is not None:
                out.append(Usage(request.user, utc_day(s.now), rejected=request.requests, limit=error.limit_name))
        task = TaskRecord(
            e.key,
            request,
            submitted=s.now,
            timeout=options.timeout or s.policy.timeout,
            retries_left=s.policy.retry_count if options.retries is None else options.retries,
            cost=s.estimates.cost(request.task_type, request.cost),
            charged=error is None and e.charge,
            ready=e.ready,
            error=error,
        )
        if e.inputs:
            task.inputs = e.inputs
        s.tasks[e.key] = task
        if error is not None:
            self.finish(task, TaskStatus.REJECTED, out, fail=error)
            return
        heapq.heappush(s.deadlines, (task.deadline, e.key))
        if len(s.deadlines) > 2 * len(s.tasks) + 1024:  # drop finished tasks' entries (amortized O(1))
            s.deadlines = [(t.deadline, k) for k, t in s.tasks.items()]
            heapq.heapify(s.deadlines)
        self._remember_demand(task.request.memory_mb)
        if over_limit:  # over the priority 4-5 limit: held, and queued once one of the user's finishes
            task.ready, task.awaiting_admission, task.inputs_ready = False, True, e.ready
            s.waiting.setdefault(task.user, {})[e.key] = None
            out.append(Hold(e.key, request.priority))
            return
        if e.ready and not s.queue and s.book.can_start(task.user):
            dispatch = self.dispatch
            decision = dispatch.decide(task)
            if decision.placed:
                dispatch.assign(task, decision, out)
                return
            if decision.outcome in ("impossible", "unhealthy"):
                self.finish(task, TaskStatus.FAILED, out, fail=no_gpu_error(task, decision))
                return
            task.waiting_reason = dispatch.wait_reason(task, decision)
        out.append(Hold(e.key, request.priority))
        if e.ready:
            self.enqueue(task)

    def _remember_demand(self, memory_mb: int) -> None:
        """What recent work needed (strategies keep the only GPUs that fit large tasks for them)."""
        s = self.state
        s.recent_window.append(memory_mb)
        s.recent_memory[memory_mb] += 1
        if len(s.recent_window) > RECENT_SUBMISSIONS:
            old = s.recent_window.popleft()
            s.recent_memory[old] -= 1
            if not s.recent_memory[old]:
                del s.recent_memory[old]

    def enqueue(self, task: TaskRecord) -> None:
        s = self.state
        task.ready = True
        shape = _wait_shape(task)
        if len(s.shapes) > MAX_SHAPES:
            s.shapes.clear()
        shape = s.shapes.setdefault(shape, shape)  # one object per shape, not one per queued task
        s.held[task.key] = shape
        s.held_memory[task.request.memory_mb] += 1
        weight = s.book.limits(task.user).weight
        entry = s.queue.push(task.key, task.user, task.request.priority, weight, task.cost, shape)
        s.queue_seq[task.key] = entry.seq
        s.counters["held"] += 1
        s.wants_dispatch = True

    def unhold(self, task: TaskRecord) -> None:
        """The task is no longer ready in the queue (placed, finished or its inputs were lost)."""
        s = self.state
        shape = s.held.pop(task.key, None)
        if shape is not None:
            memory = task.request.memory_mb
            s.held_memory[memory] -= 1
            if s.held_memory[memory] <= 0:
                del s.held_memory[memory]

    def ready(self, e: ev.Ready, out: Out) -> None:
        task = self.state.tasks.get(e.key)
        if task is None:
            if e.options is not None:  # recomputed (its result was lost) or older than the router: not charged again
                self.submitted(ev.Submitted(e.key, e.options, e.now, ready=True, charge=False, inputs=e.inputs), out)
            return
        if e.inputs is not None:
            task.inputs = e.inputs
        if task.status in ON_GPU:  # taken back without a Released event first
            self.dispatch.end_attempt(task, f"GPU {task.gpu} gave the task back")
        if task.awaiting_admission:
            task.inputs_ready = True
        elif not task.ready:
            self.enqueue(task)

    def released(self, e: ev.Released, out: Out) -> None:
        task = self.state.tasks.get(e.key)
        if task is None:
            return
        if task.status in ON_GPU:
            self.dispatch.end_attempt(task, f"GPU {task.gpu} gave the task back (its worker left or was released)")
            self.state.counters["released"] += 1
        else:
            task.ready = task.inputs_ready = False  # a held task whose inputs were lost: ready again when they are
            self.unhold(task)

    def forgotten(self, e: ev.Forgotten, out: Out) -> None:
        task = self.state.tasks.get(e.key)
        if task is not None:
            task.cancelled_by = task.cancelled_by or "its client (the future was released)"
            self.finish(task, TaskStatus.CANCELLED, out)

    def cancel(self, e: ev.Cancel, out: Out) -> None:
        task = self.state.tasks.get(e.key)
        if task is None:
            return
        task.cancelled_by = e.by
        why = f": {e.reason}" if e.reason else ""
        self.finish(task, TaskStatus.CANCELLED, out, fail=TaskCancelledError(f"task {e.key} cancelled by {e.by}{why}"))

    def finish(self, task: TaskRecord, status: TaskStatus, out: Out, *, fail: BaseException | None = None) -> None:
        s = self.state
        self.dispatch.unassign(task)
        self.unhold(task)
        task.move(status)
        task.finished_at = s.now
        del s.tasks[task.key]
        s.queue_seq.pop(task.key, None)
        if task.awaiting_admission:
            s.waiting[task.user].pop(task.key, None)
        if task.charged:  # a freed priority 4-5 place admits a waiting task at the next tick (not mid-dispatch)
            counted = not task.awaiting_admission
            s.book.finished(task.user, task.request.priority, task.gpu_seconds, outstanding=counted)
            out.append(
                Usage(task.user, utc_day(task.submitted), tasks=task.request.requests, gpu_seconds=task.gpu_seconds)
            )
            if task.served_cost:  # charge fair share what it used, not what it was expected to use
                weight = s.book.limits(task.user).weight
                s.queue.charge(task.user, task.request.priority, weight, task.gpu_seconds - task.served_cost)
        s.counters[_COUNTER[status]] += 1
        if s.recent_size:  # 0: keep no explanations (the replay simulator)
            s.recent[task.key] = task
            s.explained_in_full.append(task)  # the newest keep their per-GPU scores; older ones are compacted
            if len(s.explained_in_full) > EXPLAINED_IN_FULL:
                s.explained_in_full.popleft().compact()
            while len(s.recent) > s.recent_size:
                s.recent.popitem(last=False)
        out.append(Record(task.record()))
        if fail is not None:
            out.append(Fail(task.key, fail))

    def admit_waiting(self) -> None:
        """Admit tasks that wait over the priority 4-5 limit, oldest first per user, while their user has room
        (places freed since the last tick, or a limit an admin raised)."""
        s = self.state
        for user in list(s.waiting):
            waiting = s.waiting[user]
            while waiting and not s.book.priority_full(user, HIGH_PRIORITY):
                task = s.tasks[next(iter(waiting))]
                del waiting[task.key]
                s.book.count_outstanding(user)
                task.awaiting_admission = False
                if task.inputs_ready:
                    self.enqueue(task)
            if not waiting:
                s.waiting.pop(user, None)

    def expire(self, out: Out) -> None:
        s = self.state
        while s.deadlines and s.deadlines[0][0] <= s.now:
            deadline, key = heapq.heappop(s.deadlines)
            task = s.tasks.get(key)
            if task is None or task.deadline != deadline:
                continue
            error = GpuTaskTimeoutError(f"task {key} exceeded its timeout of {task.timeout:g}s ({task.where()})")
            self.finish(task, TaskStatus.TIMED_OUT, out, fail=error)

    # -- quotas ------------------------------------------------------------------------------------------
    def restored(self, e: ev.Restored, out: Out) -> None:
        book = self.state.book
        for user, limits in e.overrides.items():
            book.override(user, limits)
        for user, (tasks, gpu_seconds) in e.usage.items():
            book.restore(user, e.day, tasks, gpu_seconds)

    def quota_set(self, e: ev.QuotaSet, out: Out) -> None:
        """An admin's change to a user's limits: kept, and a raised limit may start work."""
        out.append(QuotaChanged(e.user, self.state.book.override(e.user, e.limits)))
        self.state.wants_dispatch = True


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
