"""GPU inventory: real devices through NVML, or the simulated pool."""

# Names load on first use (PEP 562), so the pure scheduling core can import this package's
# small modules without pulling in Dask, torch or NVML.
import importlib
from typing import Any

_WHERE = {
    "GpuFaultError": "altlas_dask.gpus.errors",
    "GpuOutOfMemoryError": "altlas_dask.gpus.errors",
    "GpuState": "altlas_dask.gpus.state",
    "GpuUnavailableError": "altlas_dask.gpus.errors",
    "NvmlInventory": "altlas_dask.gpus.nvml",
    "SimulatedGpu": "altlas_dask.gpus.simulated",
    "SimulatedInventory": "altlas_dask.gpus.simulated",
    "classify_health": "altlas_dask.gpus.state",
    "health_score": "altlas_dask.gpus.state",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "GpuFaultError",
    "GpuOutOfMemoryError",
    "GpuState",
    "GpuUnavailableError",
    "NvmlInventory",
    "SimulatedGpu",
    "SimulatedInventory",
    "classify_health",
    "health_score",
]
