"""Named workloads that the CLI, the console and the REST API submit: name -> (function, defaults)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from altlas_dask.model import DEFAULTS as GENERATE_DEFAULTS
from altlas_dask.model import generate, generation_size
from altlas_dask.worker.kernels import run_on_gpu, torch_matmul


@dataclass(frozen=True)
class Workload:
    name: str
    fn: Callable[..., Any]
    description: str
    task_type: str
    defaults: dict[str, Any] = field(default_factory=dict)
    size: Callable[[dict[str, Any]], float] | None = None  # one call's gpu_options.cost, from its arguments

    def cost_of(self, kwargs: dict[str, Any]) -> float | None:
        """One call's size in the workload's unit (``gpu_options.cost``); None when it states none."""
        size = self.size(kwargs) if self.size is not None else None
        return float(size) if size else None

    def call_args(self, **overrides: Any) -> dict[str, Any]:
        unknown = set(overrides) - set(self.defaults)
        if unknown:
            raise ValueError(f"workload {self.name!r} takes {sorted(self.defaults)}; unknown: {sorted(unknown)}")
        return {**self.defaults, **overrides}


WORKLOADS: dict[str, Workload] = {}


def register(workload: Workload) -> Workload:
    WORKLOADS[workload.name] = workload
    return workload


register(
    Workload(
        "modelled",
        run_on_gpu,
        "Modelled GPU kernel: work_gflop of compute holding memory_mb",
        "inference",
        {"work_gflop": 100.0, "memory_mb": 512},
        size=lambda p: p["work_gflop"],  # GFLOP
    )
)
register(
    Workload(
        "torch_matmul",
        torch_matmul,
        "Real torch matmuls on the worker's device (CUDA or CPU)",
        "training",
        {"size": 256, "repeats": 4, "seed": 0},
        size=lambda p: 2 * p["size"] ** 3 * p["repeats"] / 1e9,  # GFLOP of the matmuls
    )
)
register(
    Workload(
        "generate",
        generate,
        "Text generation: the shipped character-level GRU continues `text` on the worker's device",
        "text_generation",
        dict(GENERATE_DEFAULTS),
        size=generation_size,
    )
)


def get_workload(name: str) -> Workload:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; choose one of {', '.join(sorted(WORKLOADS))}") from None
