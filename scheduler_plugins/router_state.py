"""What the router keeps per GPU and per task."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from altlas_dask.gpus.state import GpuState
from altlas_dask.strategies import Decision, TaskRequest


@dataclass
class GpuSlot:
    """One GPU worker as the router sees it: last heartbeat plus its own accounting."""

    gpu_id: int
    worker: str
    base: GpuState
    raw: dict[str, Any] | None = None  # the heartbeat payload ``base`` was built from
    assigned: dict[str, int] = field(default_factory=dict)  # key -> memory_mb
    draining: bool = False
    drain_reason: str = ""
    last_busy: float = 0.0  # monotonic time the router's last task here finished
    _view: GpuState | None = None

    def view(self) -> GpuState:
        """The snapshot strategies see: heartbeat state + in-flight work + drain."""
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
    """A GPU task the router is responsible for, from submission to its final record."""

    key: str
    request: TaskRequest
    submitted: float
    timeout: float
    retries_left: int
    admitted: bool = True
    error: BaseException | None = None  # rejected at submission (bad options, quota)
    decision: Decision | None = None
    gpu: int | None = None
    placed_at: float | None = None
    finished_at: float | None = None
    gpu_seconds: float = 0.0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    status: str = "queued"
    cancelled_by: str | None = None
    timed_out: bool = False
    sharing: int = 1  # tasks on its GPU, itself included, when it was placed (they time-share the device)

    @property
    def user(self) -> str:
        return self.request.user

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
            "status": self.status,
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
