"""What the scheduling core is told. Every event carries the time it happened (``now``, Unix seconds)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from altlas_dask.gpus.state import GpuState


@dataclass(frozen=True, slots=True)
class Submitted:
    """A GPU task entered the scheduler. ``ready``: its dependencies are done. ``charge=False``: a
    recomputation of a task already charged (its result was lost with a worker)."""

    key: str
    options: Mapping[str, Any] | None
    now: float
    ready: bool = True
    charge: bool = True
    inputs: Mapping[str, int] | None = None  # worker address -> bytes of the task's inputs held there


@dataclass(frozen=True, slots=True)
class Ready:
    """A held task can run: its dependencies are done, or a failed attempt came back for another GPU.
    ``options``: the task's ``gpu_options``, for a task the core may not know (a finished task recomputed
    because its result was lost with a worker, or one submitted before the router started)."""

    key: str
    now: float
    inputs: Mapping[str, int] | None = None  # worker address -> bytes of the task's inputs held there
    options: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Started:
    """The task was sent to its GPU worker."""

    key: str
    now: float


@dataclass(frozen=True, slots=True)
class Finished:
    """The task's result is in; ``worker`` ran it for ``compute_seconds``. ``batch``: (size, share seconds)
    when it ran in a dynamic batch with others: it is charged its share of the batch call, not the call.
    ``device_seconds``: the device time its worker measured, when it knows it (see ``scheduling.sharing``)."""

    key: str
    now: float
    worker: str | None = None
    compute_seconds: float = 0.0
    batch: tuple[int, float] | None = None
    device_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Erred:
    """A worker reported an error for the task (before anything decides about retries)."""

    key: str
    now: float
    error_text: str
    worker: str | None = None
    compute_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Released:
    """The task was taken back from its worker (the worker died, or the core asked): it will come back ready."""

    key: str
    now: float


@dataclass(frozen=True, slots=True)
class Forgotten:
    """The client let go of the task before it finished."""

    key: str
    now: float


@dataclass(frozen=True, slots=True)
class Cancel:
    key: str
    now: float
    by: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class GpuJoined:
    worker: str
    state: GpuState
    now: float


@dataclass(frozen=True, slots=True)
class GpuLeft:
    worker: str
    now: float


@dataclass(frozen=True, slots=True)
class GpuReported:
    """A fresh heartbeat from a GPU worker."""

    worker: str
    state: GpuState
    now: float


@dataclass(frozen=True, slots=True)
class Drain:
    gpu: int
    now: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Enable:
    gpu: int
    now: float


@dataclass(frozen=True, slots=True)
class Restored:
    """The accounting store's state at start-up: admins' quota overrides (user -> limits, validated when they
    were set) and the usage of UTC day ``day`` (user -> (tasks, GPU seconds))."""

    now: float
    day: str
    overrides: Mapping[str, Mapping[str, Any]]
    usage: Mapping[str, tuple[int, float]]


@dataclass(frozen=True, slots=True)
class QuotaSet:
    """An admin changed ``user``'s limits (``limits``: validated by ``quotas.validate_override``)."""

    user: str
    limits: Mapping[str, Any]
    now: float


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passes: deadlines, health, and placing held work."""

    now: float


Event = (
    Submitted
    | Ready
    | Started
    | Finished
    | Erred
    | Released
    | Forgotten
    | Cancel
    | GpuJoined
    | GpuLeft
    | GpuReported
    | Drain
    | Enable
    | Restored
    | QuotaSet
    | Tick
)
