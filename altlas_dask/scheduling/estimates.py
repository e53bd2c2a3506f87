"""Learned run times: per task type and GPU, the seconds one unit of a task's ``cost`` takes alone there.

A task may say how big it is (``gpu_options.cost``: tokens, images, GFLOP, in the task type's own unit);
the core learns a rate per (task type, GPU) in seconds per unit and expects ``rate x cost`` of each task,
so a 16-token and a 650-token generation get their own estimates. A task without ``cost`` counts one unit:
its estimate is then the median of the type's recent run times on that GPU. Every figure is the median of
the last ``WINDOW`` samples, so one straggler (or one cold start) does not move it.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Container, Iterator, Mapping
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
    _own: dict[str, OwnRates] = field(default_factory=dict, repr=False)  # own_rates, live views
    _fastest: dict[str, Fewest] = field(default_factory=dict, repr=False)  # task type -> fewest rate (any run)

    def learn(
        self, gpu: int, task_type: str, alone_seconds: float, solo: bool = False, cost: float | None = None
    ) -> None:
        """``solo``: the task was placed on an idle GPU, so its time was its own (no wait for other kernels)."""
        if alone_seconds <= 0:
            return
        rate = alone_seconds / units(cost)
        tables = (self.rates, self.solo) if solo else (self.rates,)
        for table in tables:
            table.setdefault(task_type, {}).setdefault(gpu, Window()).add(rate)
        self.by_type.setdefault(task_type, Window()).add(rate)
        for fewest in (self._own.get(task_type), self._fastest.get(task_type)):
            if fewest is not None:
                fewest.changed(gpu)

    def rate(self, gpu: int, task_type: str) -> float | None:
        window = self.rates.get(task_type, {}).get(gpu)
        return None if window is None else window.median

    def expected(self, gpu: int, task_type: str, cost: float | None = None) -> float | None:
        """Seconds a task of this type and ``cost`` takes alone on ``gpu``; None until the GPU ran the type."""
        rate = self.rate(gpu, task_type)
        return None if rate is None else rate * units(cost)

    def own_rates(self, task_type: str) -> OwnRates:
        """Seconds per unit alone per GPU for this task type: from solo runs where there are some, else all (a
        live view: it follows what is learned, nothing is rebuilt per GPU)."""
        own = self._own.get(task_type)
        if own is None:
            own = self._own[task_type] = OwnRates(
                self.rates.setdefault(task_type, {}), self.solo.setdefault(task_type, {})
            )
        return own

    def own_seconds(self, task_type: str, cost: float | None = None) -> OwnRates | Scaled:
        """GPU -> the seconds this task (its type and ``cost``) is expected to take alone there."""
        own = self.own_rates(task_type)
        return own if cost is None else Scaled(own, cost)

    def fastest_rate(self, task_type: str, gpus: Container[int]) -> float | None:
        """The fewest seconds per unit of this task type among ``gpus`` (the rates of every run, not only solo)."""
        fewest = self._fastest.get(task_type)
        if fewest is None:
            table = self.rates.setdefault(task_type, {})
            fewest = self._fastest[task_type] = Fewest(lambda g: _median(table.get(g)), table)
        return fewest.fewest(gpus)

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


def _median(window: Window | None) -> float | None:
    return None if window is None else window.median


class Fewest:
    """The fewest value among a table's GPUs, kept in a heap of (value, GPU) whose stale entries (the GPU's
    value changed since) are dropped when they reach the top: O(log n) per learned value, not O(GPUs)."""

    __slots__ = ("_gpus", "_heap", "_value")

    def __init__(self, value: Callable[[int], float | None], gpus: Mapping[int, object]) -> None:
        self._value, self._gpus = value, gpus
        self._heap: list[tuple[float, int]] = []
        self._rebuild()

    def _rebuild(self) -> None:
        self._heap = [(v, g) for g in self._gpus if (v := self._value(g)) is not None]
        heapq.heapify(self._heap)

    def changed(self, gpu: int) -> None:
        value = self._value(gpu)
        if value is not None:
            heapq.heappush(self._heap, (value, gpu))
            if len(self._heap) > 2 * len(self._gpus) + 64:  # stale entries: rebuilt now and then (amortized O(1))
                self._rebuild()

    def fewest(self, among: Container[int] | None = None) -> float | None:
        """The fewest current value, of the GPUs in ``among`` (default: all)."""
        heap, away = self._heap, []
        while heap:
            value, gpu = heap[0]
            if self._value(gpu) != value:
                heapq.heappop(heap)
            elif among is not None and gpu not in among:  # (a GPU that left: kept for when it is back)
                away.append(heapq.heappop(heap))
            else:
                break
        best = heap[0][0] if heap else None
        for entry in away:
            heapq.heappush(heap, entry)
        return best


class OwnRates(Mapping[int, float]):
    """One task type's seconds per unit alone per GPU: the solo runs' median where there are some, else all
    runs'; the fewest of them is kept in a heap (:meth:`fastest`)."""

    __slots__ = ("_fewest", "_rates", "_solo")

    def __init__(self, rates: dict[int, Window], solo: dict[int, Window]) -> None:
        self._rates, self._solo = rates, solo
        self._fewest = Fewest(self.get, rates)

    def __getitem__(self, gpu: int) -> float:
        window = self._solo.get(gpu) or self._rates[gpu]
        return window.median

    def get(self, gpu: int, default: float | None = None) -> float | None:  # type: ignore[override]
        window = self._solo.get(gpu) or self._rates.get(gpu)
        return default if window is None else window.median

    def __iter__(self) -> Iterator[int]:
        return iter(self._rates)  # every solo run is also in the rates

    def __len__(self) -> int:
        return len(self._rates)

    def changed(self, gpu: int) -> None:
        self._fewest.changed(gpu)

    def fastest(self) -> float | None:
        return self._fewest.fewest()


class Scaled(Mapping[int, float]):
    """``{gpu: rate x cost}``, computed on read (a decision reads a few GPUs of a large pool)."""

    __slots__ = ("_factor", "_rates")

    def __init__(self, rates: OwnRates, factor: float) -> None:
        self._rates, self._factor = rates, factor

    def fastest(self) -> float | None:
        fastest = self._rates.fastest()
        return None if fastest is None else fastest * self._factor

    def __getitem__(self, gpu: int) -> float:
        return self._rates[gpu] * self._factor

    def __iter__(self) -> Iterator[int]:
        return iter(self._rates)

    def __len__(self) -> int:
        return len(self._rates)


class LazyPerformance(Mapping[int, float]):
    """``estimates.performance(task_type, gpus)``, one GPU at a time: the fastest rate among the connected GPUs
    (kept in a heap) over this GPU's, so a decision that reads a few GPUs does not build the whole table."""

    __slots__ = ("_estimates", "_gpus", "_task_type")

    def __init__(self, estimates: Estimates, task_type: str, gpus: Container[int]) -> None:
        self._estimates, self._task_type, self._gpus = estimates, task_type, gpus

    def _all(self) -> dict[int, float]:
        return self._estimates.performance(self._task_type, self._gpus)

    def __getitem__(self, gpu: int) -> float:
        value = self.get(gpu)
        if value is None:
            raise KeyError(gpu)
        return value

    def get(self, gpu: int, default: float | None = None) -> float | None:  # type: ignore[override]
        rate = self._estimates.rate(gpu, self._task_type)
        if rate is None or gpu not in self._gpus:
            return default
        best = self._estimates.fastest_rate(self._task_type, self._gpus)
        return best / rate if rate > 0 and best is not None else 1.0

    def __iter__(self) -> Iterator[int]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return repr(self._all())
