"""A read-only view of the scheduling core, for RPC handlers, metrics and the dashboard."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from typing import Any, NamedTuple

from altlas_dask.config import RoutingPolicy
from altlas_dask.gpus.state import GpuState
from altlas_dask.protocol import TaskStatus
from altlas_dask.scheduling.core import HELD, SchedulingCore
from altlas_dask.scheduling.strategies import matches, rejection
from altlas_dask.scheduling.tasks import TaskRecord

ORDERS = ("submitted", "priority", "queue")


class Positions(NamedTuple):
    """The queue as one listing sees it, computed once per call: 1-based position per held key, held tasks
    per priority (so each row's "behind N higher-priority task(s)" is O(priorities), not O(tasks))."""

    of: dict[str, int]
    held: Counter[int]
    ahead_s: dict[str, float]  # held key -> learned seconds of the ready tasks queued ahead of it


class CoreView:
    """What the core knows, as plain data; nothing here changes it."""

    def __init__(self, core: SchedulingCore) -> None:
        self._core = core.state  # (every read below is of the core's state)

    @property
    def policy(self) -> RoutingPolicy:
        return self._core.policy

    def gpus(self) -> tuple[GpuState, ...]:
        return self._core.gpus.snapshot()

    def speeds(self, task_type: str) -> dict[int, float]:
        return self._core.estimates.performance(task_type, self._core.gpus.slots)

    def known_gpus(self) -> set[int]:
        return self._core.gpus.known

    def counters(self) -> dict[str, int]:
        return dict(self._core.counters)

    def placements(self, limit: int = 50) -> list[dict[str, Any]]:
        return list(self._core.placements)[-limit:]

    def decision_seconds(self) -> list[float]:
        return list(self._core.decision_seconds)

    def live_statuses(self) -> Counter[str]:
        return Counter(str(t.status) for t in self._core.tasks.values())

    def queued_by_user(self) -> Counter[str]:
        return Counter(t.user for t in self._core.tasks.values() if t.status in HELD)

    def queued(self) -> int:
        return sum(1 for t in self._core.tasks.values() if t.status in HELD)

    def tracks(self, key: str) -> bool:
        """The task is live in the core (submitted, not yet final)."""
        return key in self._core.tasks

    def is_admin(self, user: str | None) -> bool:
        return self._core.book.is_admin(user)

    def overridden_users(self) -> Collection[str]:
        """Users with quota overrides (config or an admin's), as a live collection: it grows as admins set them."""
        return self._core.book.overrides.keys()

    def limits(self, user: str) -> dict[str, Any]:
        return self._core.book.limits(user).model_dump()

    def quota_report(self, user: str) -> dict[str, Any]:
        return self._core.book.report(user)

    def owner(self, key: str) -> str | None:
        """The user of a live or recently finished task."""
        task = self._core.tasks.get(key)
        if task is not None:
            return task.user
        info = self._core.recent.get(key)
        return info.user if info is not None else None

    # -- explanations ---------------------------------------------------------------------------
    def explain(self, keys: Iterable[str], now: float | None = None) -> dict[str, dict[str, Any]]:
        """Live tasks (with queue position, waiting reason and estimated start and completion, see
        :meth:`estimate`, as of ``now``: default the core's last event) and recently finished ones; others are
        absent."""
        core, out = self._core, {}
        positions: Positions | None = None
        for key in keys:
            task = core.tasks.get(key)
            if task is None:
                if key in core.recent:
                    out[key] = core.recent[key].explain()
                continue
            if positions is None:
                positions = self._positions()
            row = out[key] = self._row(task, positions)
            row["estimated_start"], row["estimated_completion"] = self.estimate(task, positions, now) or (None, None)
        return out

    def tasks(
        self,
        user: str | None = None,
        status: Iterable[str] | None = None,
        order: str = "submitted",
        limit: int = 100,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Live tasks of ``user`` (None: all) and those among the cluster's last ``recent_size`` finished ones,
        with true counts per status over that set."""
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)} (got {order!r})")
        core = self._core
        positions = self._positions()
        live = [t for t in core.tasks.values() if user is None or t.user == user]
        done = [t for t in core.recent.values() if user is None or t.user == user]
        counts = Counter(str(t.status) for t in live) + Counter(str(t.status) for t in done)
        wanted = set(status) if status is not None else None
        rows = [self._row(t, positions) for t in live if wanted is None or str(t.status) in wanted]
        rows += [t.explain() for t in done if wanted is None or str(t.status) in wanted]
        if order == "queue":
            rows.sort(key=lambda r: (r.get("queue_position") is None, r.get("queue_position") or 0, -r["submitted"]))
        elif order == "priority":
            rows.sort(key=lambda r: (-r["priority"], r["submitted"]))
        else:
            rows.sort(key=lambda r: r["submitted"], reverse=True)
        return {
            "tasks": rows[offset : offset + limit],
            "total": len(rows),
            "counts": dict(counts),
            "order": order,
            "finished_window": core.recent_size,  # finished tasks are counted among the cluster's last N
        }

    def _positions(self) -> Positions:
        core = self._core
        order = dict.fromkeys(k for k in core.queue.order() if k in core.tasks and core.tasks[k].ready)
        held = Counter(t.request.priority for t in core.tasks.values() if t.ready and t.status in HELD)
        ahead_s, total = {}, 0.0
        for key in order:
            ahead_s[key] = total
            request = core.tasks[key].request
            total += core.estimates.cost(request.task_type, request.cost)
        return Positions({key: i + 1 for i, key in enumerate(order)}, held, ahead_s)

    def _row(self, task: TaskRecord, positions: Positions) -> dict[str, Any]:
        row = task.explain()
        row["queue_position"] = positions.of.get(task.key)
        if task.status in HELD:
            row["waiting_reason"] = self._waiting_reason(task, positions)
        return row

    def estimate(self, task: TaskRecord, positions: Positions, now: float | None = None) -> tuple[float, float] | None:
        """(start, completion) in Unix seconds, from the queue ahead and learned durations; None when unknown.

        A task on a GPU: start = when it started (or ``now`` while it waits for a slot there), completion =
        start + its learned seconds alone there x the tasks sharing the GPU with it (never before ``now``).
        A ready task in the queue: start = ``now`` + the soonest a GPU it fits frees a slot (min over those
        GPUs of backlog / slots) + the learned seconds of the tasks queued ahead of it spread over those GPUs;
        completion = start + its learned seconds alone on the fastest of them. The GPUs it fits: active, and
        not ruled out for good (memory, compute capability, a GPU that failed it, ``specific_gpu_id``).
        """
        core = self._core
        now = core.now if now is None else now
        if task.status in (TaskStatus.PLACED, TaskStatus.RUNNING):
            slot = core.gpus.slots.get(task.gpu) if task.gpu is not None else None
            if slot is None or task.key not in slot.expected_s:
                return None
            start = (
                task.started_at
                if task.status == TaskStatus.RUNNING and task.started_at
                else max(now, task.placed_at or now)
            )
            return start, max(now, start + slot.expected_s[task.key] * task.sharing)
        ahead = positions.ahead_s.get(task.key)
        if task.status not in HELD or ahead is None:
            return None
        request, policy = task.request, core.policy
        fitting = [
            g.id
            for g in core.gpus.snapshot()
            if g.status == "active"
            and (request.gpu is None or matches(g, request.gpu))
            and ((why := rejection(g, request, policy)) is None or not why[1])  # not ruled out for good
        ]
        if not fitting:
            return None
        slots = policy.max_concurrent_tasks_per_gpu
        frees = min(core.gpus.slots[g].backlog_s for g in fitting) / slots
        start = now + frees + ahead / len(fitting)
        own = core.estimates.own_seconds(request.task_type, request.cost)
        alone = min(own.get(g) or core.estimates.cost(request.task_type, request.cost) for g in fitting)
        return start, start + alone

    def _waiting_reason(self, task: TaskRecord, positions: Positions) -> str:
        core = self._core
        if task.awaiting_admission:
            limit = core.book.limits(task.user).priority_requests
            return (
                f"waiting for admission: user {task.user!r} has {limit} priority 4-5 tasks outstanding "
                "(quota priority_requests); it is queued when one of them finishes"
            )
        if not task.ready:
            return task.waiting_reason or task.where()
        if not core.book.can_start(task.user):
            limit = core.book.limits(task.user).concurrent_requests
            return f"user {task.user!r} is at its concurrency limit ({limit} running)"
        ahead = positions.of.get(task.key, 1) - 1
        higher = sum(n for priority, n in positions.held.items() if priority > task.request.priority)
        parts = []
        if higher:
            parts.append(f"behind {higher} higher-priority task(s)")
        elif ahead:
            parts.append(f"behind {ahead} task(s) ahead in the queue")
        if task.waiting_reason:
            parts.append(task.waiting_reason)
        return "; ".join(parts) or "next in line for a GPU"

    def status_of(self, key: str) -> TaskStatus | None:
        task = self._core.tasks.get(key)
        if task is not None:
            return task.status
        info = self._core.recent.get(key)
        return info.status if info is not None else None
