"""Errors a GPU task's future can raise (pickled on the scheduler, raised on the client)."""

from __future__ import annotations

from altlas_dask.options import GpuOptionsError


class GpuRoutingError(RuntimeError):
    """No GPU in the cluster can ever run this task (the message says why, per GPU)."""


class GpuTaskTimeoutError(TimeoutError):
    """The task did not finish within its ``timeout`` (queue wait included)."""


class GpuRetriesExhaustedError(RuntimeError):
    """The task failed with GPU errors on every GPU it was retried on."""


__all__ = ["GpuOptionsError", "GpuRetriesExhaustedError", "GpuRoutingError", "GpuTaskTimeoutError"]
