"""Errors a GPU task's future can raise (pickled on the scheduler, raised on the client)."""

from __future__ import annotations

from altlas_dask.options import GpuOptionsError
from altlas_dask.scheduling.quotas import QuotaExceededError


class GpuRoutingError(RuntimeError):
    """No GPU in the cluster can ever run this task (the message says why, per GPU)."""


class GpuTaskTimeoutError(TimeoutError):
    """The task did not finish within its ``timeout`` (queue wait included)."""


class GpuRetriesExhaustedError(RuntimeError):
    """The task failed with GPU errors on every GPU it was retried on."""


class TaskCancelledError(RuntimeError):
    """The task was cancelled through the router (by its owner or an admin)."""


class IdentityError(PermissionError):
    """No verified identity, or one that may not act as the user it names; ``code`` 401 (no identity) or 403."""

    def __init__(self, message: str, code: int = 403) -> None:
        super().__init__(message)
        self.code = code


__all__ = [
    "GpuOptionsError",
    "GpuRetriesExhaustedError",
    "GpuRoutingError",
    "GpuTaskTimeoutError",
    "IdentityError",
    "QuotaExceededError",
    "TaskCancelledError",
]
