"""A GPU task as the core tracks it, from submission to its final record."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from altlas_dask.protocol import TaskStatus
from altlas_dask.scheduling.lifecycle import allowed
from altlas_dask.scheduling.strategies import Decision, TaskRequest

NO_INPUTS: Mapping[str, int] = MappingProxyType({})
NO_SCORES: Mapping[int, float] = MappingProxyType({})
NO_REJECTIONS: Mapping[int, str] = MappingProxyType({})


class IllegalTransition(AssertionError):
    """The core tried a status change the lifecycle does not allow (a bug, never user input)."""


@dataclass(slots=True)
class TaskRecord:
    key: str
    request: TaskRequest
    submitted: float
    timeout: float
    retries_left: int
    cost: float  # estimated GPU seconds, charged to fair share when placed
    charged: bool = True  # counted against the user's quotas (False for rejections and recomputations)
    status: TaskStatus = TaskStatus.QUEUED
    ready: bool = False  # dependencies done and not on a GPU: waiting only for a GPU
    error: BaseException | None = None  # why it was rejected at submission
    decision: Decision | None = None
    gpu: int | None = None
    placed_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    gpu_seconds: float = 0.0
    attempts: list[dict[str, Any]] | Sequence[dict[str, Any]] = field(default_factory=list)
    cancelled_by: str | None = None
    sharing: int = 1  # tasks on its GPU, itself included, when placed (they time-share the device)
    rank: tuple[int, int] = (0, 0)  # (-priority, placement number): its place in its worker's queue
    served_cost: float = 0.0  # fair-share cost charged when it was placed
    waiting_reason: str = ""
    awaiting_admission: bool = False  # over its user's priority 4-5 limit: held until one of theirs finishes
    inputs_ready: bool = False  # while awaiting admission: its inputs are done (it is queued once admitted)
    inputs: Mapping[str, int] = field(default_factory=dict)  # worker -> bytes of its inputs held there
    batch_size: int | None = None  # the size of the worker-side batch it ran in (dynamic batching)
    share_mark: float | None = None  # its GPU's ShareClock when it started running there (see sharing.py)
    hold_until: float | None = None  # held for a better GPU (Decision.waits_for): until then at most

    @property
    def user(self) -> str:
        return self.request.user

    @property
    def deadline(self) -> float:
        return self.submitted + self.timeout

    def move(self, status: TaskStatus) -> None:
        if not allowed(self.status, status):
            raise IllegalTransition(f"task {self.key}: {self.status} -> {status} is not an allowed transition")
        self.status = status

    def compact(self) -> None:
        """Shed what a final record does not need (issue 24: at most 1 KB per record kept): the per-GPU scores
        (the reason states the chosen GPU's; the rejections stay), empty containers (shared ones instead)."""
        d = self.decision
        if d is not None and (d.scores or not d.rejected):
            self.decision = Decision(d.strategy, d.outcome, d.gpu, d.reason, NO_SCORES, d.rejected or NO_REJECTIONS)
        self.inputs = NO_INPUTS
        if not self.attempts:
            self.attempts = ()

    def where(self) -> str:
        """Where the task is, in words (timeouts and explanations say it)."""
        if self.status == TaskStatus.PLACED:
            return f"placed on GPU {self.gpu}, next to run there"
        if self.status == TaskStatus.RUNNING:
            return f"running on GPU {self.gpu}"
        if self.status == TaskStatus.RETRYING:
            return f"waiting to be retried after {len(self.attempts)} attempt(s)"
        if not self.ready:
            return "waiting for its dependencies"
        return "still waiting for a GPU"

    def explain(self) -> dict[str, Any]:
        r = self.request
        out: dict[str, Any] = {
            "key": self.key,
            "status": str(self.status),
            "user": r.user,
            "priority": r.priority,
            "task_type": r.task_type,
            "memory_mb": r.memory_mb,
            "gpu": self.gpu,
            "strategy": r.strategy,
            "attempts": list(self.attempts),
            "submitted": self.submitted,
            "placed_at": self.placed_at,
            "finished_at": self.finished_at,
            "gpu_seconds": round(self.gpu_seconds, 6),
            "error": str(self.error) if self.error else None,
        }
        if self.decision is not None:
            out.update(self.decision.to_dict())
            out["gpu"] = self.gpu
        if self.waiting_reason and not self.status.final:
            out["waiting_reason"] = self.waiting_reason
        if self.batch_size is not None:
            out["batch_size"] = self.batch_size
        if r.cost is not None:
            out["cost"] = r.cost
        return out

    def record(self) -> dict[str, Any]:
        """The row for the accounting database."""
        decision = self.decision
        return {
            "key": self.key,
            "user": self.user,
            "gpu": self.gpu,
            "strategy": decision.strategy if decision else self.request.strategy,
            "reason": decision.reason if decision else None,
            "status": str(self.status),
            "priority": self.request.priority,
            "task_type": self.request.task_type,
            "memory_mb": self.request.memory_mb,
            "submitted": self.submitted,
            "started": self.placed_at,
            "finished": self.finished_at,
            "gpu_seconds": self.gpu_seconds,
            "attempts": len(self.attempts),
            "error": str(self.error) if self.error else (self.attempts[-1]["error"] if self.attempts else None),
        }
