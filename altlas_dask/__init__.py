"""GPU-aware scheduling for AI inference and batch jobs, built on Dask."""

# Names load on first use (PEP 562), so the pure scheduling core can import this package's
# small modules without pulling in Dask, torch or NVML.
import importlib
from typing import Any

_WHERE = {
    "AltlasConfig": "altlas_dask.config",
    "Batch": "altlas_dask.client",
    "Client": "altlas_dask.client",
    "ConfigError": "altlas_dask.config",
    "GpuCluster": "altlas_dask.launcher",
    "GpuFaultError": "altlas_dask.gpus",
    "GpuOptions": "altlas_dask.options",
    "GpuOptionsError": "altlas_dask.options",
    "GpuOutOfMemoryError": "altlas_dask.gpus",
    "GpuRetriesExhaustedError": "altlas_dask.errors",
    "GpuRoutingError": "altlas_dask.errors",
    "GpuState": "altlas_dask.gpus",
    "GpuTaskTimeoutError": "altlas_dask.errors",
    "GpuUnavailableError": "altlas_dask.gpus",
    "QuotaExceededError": "altlas_dask.errors",
    "RouterError": "altlas_dask.client",
    "TaskCancelledError": "altlas_dask.errors",
    "batched": "altlas_dask.batching",
    "load_config": "altlas_dask.config",
    "run_on_gpu": "altlas_dask.kernels",
    "start_cluster": "altlas_dask.launcher",
    "torch_matmul": "altlas_dask.kernels",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "AltlasConfig",
    "Batch",
    "Client",
    "ConfigError",
    "GpuCluster",
    "GpuFaultError",
    "GpuOptions",
    "GpuOptionsError",
    "GpuOutOfMemoryError",
    "GpuRetriesExhaustedError",
    "GpuRoutingError",
    "GpuState",
    "GpuTaskTimeoutError",
    "GpuUnavailableError",
    "QuotaExceededError",
    "RouterError",
    "TaskCancelledError",
    "batched",
    "load_config",
    "run_on_gpu",
    "start_cluster",
    "torch_matmul",
]
