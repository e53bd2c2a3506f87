"""What the scheduling core asks the Dask adapter to do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Place:
    """Run the task on this GPU's worker (pin it there). ``rank`` is its place in the worker's queue (Dask's task
    priority there, lower starts first): the worker starts its next task in this order when a slot frees."""

    key: str
    gpu: int
    worker: str
    memory_mb: int
    rank: tuple[int, int] = (0, 0)
    user: str = ""
    task_type: str = ""
    waited: float = 0.0  # seconds from submission to this placement


@dataclass(frozen=True, slots=True)
class Hold:
    """Keep the task on the scheduler until a later :class:`Place`; while it waits there, Dask orders it by
    ``priority`` (1-5, higher first)."""

    key: str
    priority: int = 3


@dataclass(frozen=True, slots=True)
class Fail:
    """Make the task err with ``error`` wherever it is (held, waiting on dependencies, or running)."""

    key: str
    error: BaseException


@dataclass(frozen=True, slots=True)
class Release:
    """Take a running task back from its worker; it comes back as ready and is placed again."""

    key: str


@dataclass(frozen=True, slots=True)
class Retry:
    """Answer to an error report: let Dask run the task again (it comes back held, then ready). ``gpu``: the GPU
    that failed it."""

    key: str
    gpu: int | None = None


@dataclass(frozen=True, slots=True)
class KeepError:
    """Answer to an error report: the task fails, with ``replacement`` as its error if given."""

    key: str
    replacement: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """A task reached its final status: its row for the accounting database."""

    row: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Usage:
    """Add to a user's durable usage for a UTC day."""

    user: str
    day: str
    tasks: int = 0
    gpu_seconds: float = 0.0
    rejected: int = 0
    limit: str | None = None  # the quota limit that rejected it


@dataclass(frozen=True, slots=True)
class Decided:
    """The core took one placement decision (for metrics): its strategy, outcome and ``seconds`` on the timer."""

    strategy: str
    outcome: str
    seconds: float


@dataclass(frozen=True, slots=True)
class QuotaChanged:
    """``user``'s quota overrides are now ``limits``: keep them (they outlive a scheduler restart)."""

    user: str
    limits: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DispatchSoon:
    """Held work may be placeable: send a :class:`~altlas_dask.scheduling.events.Tick` soon (once is enough)."""


DISPATCH_SOON = DispatchSoon()

Action = Place | Hold | Fail | Release | Retry | KeepError | Record | Usage | Decided | QuotaChanged | DispatchSoon
