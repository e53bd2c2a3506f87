"""Building blocks for driving the scheduling core event by event, with a clock the test owns."""

from __future__ import annotations

from typing import Any

from altlas_dask.config import build_config
from altlas_dask.gpus.state import GpuState
from altlas_dask.scheduling import events as ev
from altlas_dask.scheduling.actions import Action, Fail, Place
from altlas_dask.scheduling.core import SchedulingCore


def make_core(config: dict[str, Any] | None = None, **kwargs: Any) -> SchedulingCore:
    data: dict[str, Any] = {"accounting": {"database": ":memory:"}}
    for section, values in (config or {}).items():
        data[section] = {**data.get(section, {}), **values}
    return SchedulingCore.from_config(build_config(data), timer=lambda: 0.0, **kwargs)


def gpu(index: int, memory_mb: int = 16384, **changes: Any) -> GpuState:
    fields: dict[str, Any] = dict(
        id=index,
        uuid=f"GPU-test-{index}",
        name="Test GPU",
        compute_capability="8.0",
        status="active",
        memory_total_mb=memory_mb,
        memory_used_mb=0,
        utilization_gpu=0.0,
        utilization_memory=0.0,
        temperature_c=40.0,
        power_usage_w=50.0,
        power_limit_w=300.0,
    )
    fields.update(changes)
    return GpuState(**fields)


class Driver:
    """A core plus the worker addresses of its GPUs; every call returns the core's actions."""

    def __init__(self, core: SchedulingCore, gpus: int = 2, now: float = 1_000.0, **gpu_changes: Any) -> None:
        self.core, self.now = core, now
        for i in range(gpus):
            self.join(i, **gpu_changes)

    def worker(self, index: int) -> str:
        return f"tcp://gpu-{index}"

    def join(self, index: int, **changes: Any) -> list[Action]:
        return self.core.handle(ev.GpuJoined(self.worker(index), gpu(index, **changes), self.now))

    def report(self, index: int, **changes: Any) -> list[Action]:
        return self.core.handle(ev.GpuReported(self.worker(index), gpu(index, **changes), self.now))

    def submit(self, key: str, ready: bool = True, **options: Any) -> list[Action]:
        return self.core.handle(ev.Submitted(key, options, self.now, ready=ready))

    def tick(self, seconds: float = 0.0) -> list[Action]:
        self.now += seconds
        return self.core.handle(ev.Tick(self.now))

    def start(self, key: str) -> list[Action]:
        return self.core.handle(ev.Started(key, self.now))

    def finish(self, key: str, seconds: float = 1.0) -> list[Action]:
        task = self.core.tasks[key]
        return self.core.handle(ev.Finished(key, self.now, self.worker(task.gpu), seconds))

    def err(self, key: str, text: str, seconds: float = 0.1) -> list[Action]:
        task = self.core.tasks[key]
        return self.core.handle(ev.Erred(key, self.now, text, self.worker(task.gpu), seconds))


def placed(actions: list[Action]) -> dict[str, int]:
    return {a.key: a.gpu for a in actions if isinstance(a, Place)}


def failed(actions: list[Action]) -> dict[str, BaseException]:
    return {a.key: a.error for a in actions if isinstance(a, Fail)}


class HighestId:
    """A custom strategy (``gpu.multi_gpu.custom_strategies``): the eligible GPU with the highest id."""

    def scope(self, gpus, request):
        return gpus

    def pick(self, candidates, request, ctx):
        if not candidates.eligible:
            return "nothing eligible"
        chosen = max(candidates.eligible, key=lambda g: g.id)
        return chosen, f"highest id {chosen.id}", {}



class _AnyScope:
    def scope(self, gpus, request):
        return gpus


class PickRaises(_AnyScope):
    """A misbehaving custom strategy: its pick raises."""

    def pick(self, candidates, request, ctx):
        raise ZeroDivisionError("a bug in the strategy")


class PicksAGpuThatDoesNotFit(_AnyScope):
    """A misbehaving custom strategy: the highest id, eligible or not."""

    def pick(self, candidates, request, ctx):
        chosen = max(candidates.gpus, key=lambda g: g.id)
        return chosen, "the highest id, eligible or not", {}


class ReturnsNonsense(_AnyScope):
    """A misbehaving custom strategy: not a pick at all."""

    def pick(self, candidates, request, ctx):
        return 42


class ScopeRaises(HighestId):
    """A misbehaving custom strategy: its scope raises."""

    def scope(self, gpus, request):
        raise KeyError("scope")
