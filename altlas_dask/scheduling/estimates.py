"""Learned run times: per task type and GPU, what a task takes alone on that GPU (an EWMA)."""

from __future__ import annotations

from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass, field

EWMA = 0.2
DEFAULT_COST_S = 1.0
SOLO_JUMP = 2.0  # fair-share cost of a task type nothing has been learned about


def _blend(previous: float | None, value: float) -> float:
    return value if previous is None else (1 - EWMA) * previous + EWMA * value


@dataclass
class Estimates:
    per_type: dict[str, dict[int, float]] = field(default_factory=dict)  # task type -> GPU -> seconds alone
    by_type: dict[str, float] = field(default_factory=dict)  # task type -> seconds, over every GPU
    solo: dict[str, dict[int, float]] = field(default_factory=dict)  # the same, from tasks placed on an idle GPU
    _own: dict[str, dict[int, float]] = field(default_factory=dict, repr=False)  # own_seconds, until the next learn

    def learn(self, gpu: int, task_type: str, alone_seconds: float, solo: bool = False) -> None:
        """``solo``: the task was placed on an idle GPU, so its time was its own (no wait for other kernels)."""
        if alone_seconds <= 0:
            return
        self._own.pop(task_type, None)
        if solo:  # exact samples: a value off by more than SOLO_JUMP x replaces the average outright
            own = self.solo.setdefault(task_type, {})
            previous = own.get(gpu)
            jumped = previous is not None and not previous / SOLO_JUMP <= alone_seconds <= previous * SOLO_JUMP
            own[gpu] = alone_seconds if jumped else _blend(previous, alone_seconds)
        table = self.per_type.setdefault(task_type, {})
        table[gpu] = _blend(table.get(gpu), alone_seconds)
        self.by_type[task_type] = _blend(self.by_type.get(task_type), alone_seconds)

    def expected(self, gpu: int, task_type: str) -> float | None:
        return self.per_type.get(task_type, {}).get(gpu)

    def own_seconds(self, task_type: str) -> dict[int, float]:
        """Seconds alone per GPU for this task type: from solo runs where there are some, else blended."""
        own = self._own.get(task_type)
        if own is None:
            blended, solo = self.per_type.get(task_type, {}), self.solo.get(task_type)
            own = self._own[task_type] = {**blended, **solo} if solo else blended
        return own

    def cost(self, task_type: str) -> float:
        """Estimated GPU seconds of one task of this type (fair share charges it before the task runs)."""
        known = self.by_type.get(task_type)
        if known is not None:
            return known
        if self.by_type:
            return sum(self.by_type.values()) / len(self.by_type)
        return DEFAULT_COST_S

    def performance(self, task_type: str, gpus: Container[int]) -> dict[int, float]:
        """Relative speed per GPU for this task type: the fastest mean duration over this GPU's."""
        means = {g: d for g, d in self.per_type.get(task_type, {}).items() if g in gpus}
        if not means:
            return {}
        best = min(means.values())
        return {g: best / d if d > 0 else 1.0 for g, d in means.items()}


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
