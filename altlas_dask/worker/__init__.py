"""The GPU worker's side: its GPU binding (the ``--preload altlas_dask.worker`` plugin), health, kernels, batching."""

from altlas_dask.worker.binding import dask_setup

__all__ = ["dask_setup"]
