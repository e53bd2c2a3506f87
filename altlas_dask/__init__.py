"""GPU-aware scheduling for AI inference and batch jobs, built on Dask."""

from altlas_dask.client import Batch, Client, RouterError
from altlas_dask.config import AltlasConfig, ConfigError, load_config
from altlas_dask.errors import (
    GpuRetriesExhaustedError,
    GpuRoutingError,
    GpuTaskTimeoutError,
    QuotaExceededError,
    TaskCancelledError,
)
from altlas_dask.gpus import GpuFaultError, GpuOutOfMemoryError, GpuState, GpuUnavailableError
from altlas_dask.kernels import run_on_gpu, torch_matmul
from altlas_dask.launcher import GpuCluster, start_cluster
from altlas_dask.options import GpuOptions, GpuOptionsError

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
    "load_config",
    "run_on_gpu",
    "start_cluster",
    "torch_matmul",
]
