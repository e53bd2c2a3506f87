"""Learned run times: per task type and GPU, the seconds one unit of a task's ``cost`` takes alone there.

A task may say how big it is (``gpu_options.cost``: tokens, images, GFLOP, in the task type's own unit);
the core learns a rate per (task type, GPU) in seconds per unit and expects ``rate x cost`` of each task,
so a 16-token and a 650-token generation get their own estimates. A task without ``cost`` counts one unit:
its estimate is then the median of the type's recent run times on that GPU. Every figure is the median of
the last ``WINDOW`` samples, so one straggler (or one cold start) does not move it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass, field

WINDOW = 15  # samples per (task type, GPU): the median of the latest ones
DEFAULT_COST_S = 1.0


class Window:
    """The median of the latest ``WINDOW`` samples (recomputed when one arrives, read for free)."""

    __slots__ = ("median", "samples")

    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=WINDOW)
        self.median = 0.0

    def add(self, value: float) -> None:
        self.samples.append(value)
        ordered = sorted(self.samples)
        n = len(ordered)
        self.median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def units(cost: float | None) -> float:
    """How many units a task is: its ``gpu_options.cost``, one without it."""
    return 1.0 if cost is None else cost


@dataclass
class Estimates:
    rates: dict[str, dict[int, Window]] = field(default_factory=dict)  # task type -> GPU -> s per unit alone
    by_type: dict[str, Window] = field(default_factory=dict)  # task type -> s per unit, over every GPU
    solo: dict[str, dict[int, Window]] = field(default_factory=dict)  # the same, from tasks placed on an idle GPU
    _own: dict[str, dict[int, float]] = field(default_factory=dict, repr=False)  # own_rates, until the next learn

    def learn(
        self, gpu: int, task_type: str, alone_seconds: float, solo: bool = False, cost: float | None = None
    ) -> None:
        """``solo``: the task was placed on an idle GPU, so its time was its own (no wait for other kernels)."""
        if alone_seconds <= 0:
            return
        rate = alone_seconds / units(cost)
        self._own.pop(task_type, None)
        tables = (self.rates, self.solo) if solo else (self.rates,)
        for table in tables:
            table.setdefault(task_type, {}).setdefault(gpu, Window()).add(rate)
        self.by_type.setdefault(task_type, Window()).add(rate)

    def rate(self, gpu: int, task_type: str) -> float | None:
        window = self.rates.get(task_type, {}).get(gpu)
        return None if window is None else window.median

    def expected(self, gpu: int, task_type: str, cost: float | None = None) -> float | None:
        """Seconds a task of this type and ``cost`` takes alone on ``gpu``; None until the GPU ran the type."""
        rate = self.rate(gpu, task_type)
        return None if rate is None else rate * units(cost)

    def own_rates(self, task_type: str) -> dict[int, float]:
        """Seconds per unit alone per GPU for this task type: from solo runs where there are some, else all."""
        own = self._own.get(task_type)
        if own is None:
            own = {g: w.median for g, w in self.rates.get(task_type, {}).items()}
            own.update((g, w.median) for g, w in self.solo.get(task_type, {}).items())
            self._own[task_type] = own
        return own

    def own_seconds(self, task_type: str, cost: float | None = None) -> Mapping[int, float]:
        """GPU -> the seconds this task (its type and ``cost``) is expected to take alone there."""
        own = self.own_rates(task_type)
        return own if cost is None else Scaled(own, cost)

    def cost(self, task_type: str, cost: float | None = None) -> float:
        """Estimated GPU seconds of one task of this type and ``cost`` (fair share charges it before it runs)."""
        known = self.by_type.get(task_type)
        if known is not None:
            return known.median * units(cost)
        if self.by_type:
            return sum(w.median for w in self.by_type.values()) / len(self.by_type) * units(cost)
        return DEFAULT_COST_S

    def performance(self, task_type: str, gpus: Container[int]) -> dict[int, float]:
        """Relative speed per GPU for this task type: the fastest rate over this GPU's."""
        rates = {g: w.median for g, w in self.rates.get(task_type, {}).items() if g in gpus}
        if not rates:
            return {}
        best = min(rates.values())
        return {g: best / r if r > 0 else 1.0 for g, r in rates.items()}


class Scaled(Mapping[int, float]):
    """``{gpu: rate x cost}``, computed on read (a decision reads a few GPUs of a large pool)."""

    __slots__ = ("_factor", "_rates")

    def __init__(self, rates: Mapping[int, float], factor: float) -> None:
        self._rates, self._factor = rates, factor

    def __getitem__(self, gpu: int) -> float:
        return self._rates[gpu] * self._factor

    def __iter__(self) -> Iterator[int]:
        return iter(self._rates)

    def __len__(self) -> int:
        return len(self._rates)


class LazyPerformance(Mapping[int, float]):
    """``estimates.performance(task_type, gpus)``, computed on its first read: a decision builds one for its
    strategy, and most strategies (earliest_finish, round_robin, memory_optimized) never read it."""

    __slots__ = ("_estimates", "_gpus", "_task_type", "_value")

    def __init__(self, estimates: Estimates, task_type: str, gpus: Container[int]) -> None:
        self._estimates, self._task_type, self._gpus = estimates, task_type, gpus
        self._value: dict[int, float] | None = None

    def _get(self) -> dict[int, float]:
        value = self._value
        if value is None:
            value = self._value = self._estimates.performance(self._task_type, self._gpus)
        return value

    def __getitem__(self, gpu: int) -> float:
        return self._get()[gpu]

    def get(self, gpu: int, default: float | None = None) -> float | None:  # type: ignore[override]
        return self._get().get(gpu, default)

    def __iter__(self) -> Iterator[int]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __repr__(self) -> str:
        return repr(self._get())
