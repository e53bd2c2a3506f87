"""GPU inventory: real devices through NVML, or the simulated pool."""

from altlas_dask.lazy import lazy_getattr

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


__getattr__ = lazy_getattr(globals(), _WHERE)  # names load on first use (altlas_dask.lazy)

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
