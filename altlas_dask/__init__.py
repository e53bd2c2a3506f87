"""GPU-aware scheduling for AI inference and batch jobs, built on Dask."""

from altlas_dask.lazy import lazy_getattr

_WHERE = {
    "AltlasConfig": "altlas_dask.config",
    "Batch": "altlas_dask.client.gpu_client",
    "Client": "altlas_dask.client.gpu_client",
    "ConfigError": "altlas_dask.config",
    "GpuCluster": "altlas_dask.ops.launcher",
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
    "RouterError": "altlas_dask.errors",
    "TaskCancelledError": "altlas_dask.errors",
    "batched": "altlas_dask.worker.batching",
    "load_config": "altlas_dask.config",
    "run_on_gpu": "altlas_dask.worker.kernels",
    "start_cluster": "altlas_dask.ops.launcher",
    "torch_matmul": "altlas_dask.worker.kernels",
}


__getattr__ = lazy_getattr(globals(), _WHERE)  # names load on first use (altlas_dask.lazy)

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
