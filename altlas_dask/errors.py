"""Errors a GPU task's future can raise (pickled on the scheduler, raised on the client), and the router's
refusals as the client raises them (altlas_dask.client.router_client decodes the replies)."""

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


class RouterError(RuntimeError):
    """The router refused a request; ``code`` is HTTP-like (400 bad value, 403 not allowed, 404 unknown, 409 too
    late, 503 no router); ``field`` and ``value``: the request field at fault, where the router names one."""

    def __init__(self, message: str, code: int = 400, field: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.code, self.field, self.value = code, field, value


class RouterValueError(RouterError, ValueError):
    """400: a value the router does not accept."""


class RouterAccessError(RouterError):
    """401 (no verified identity) or 403 (this caller may not do that, or not act as that user)."""


class RouterLookupError(RouterError, LookupError):
    """404: an unknown task or GPU (or one this caller may not see)."""


#: The router's error code -> what the client raises (any other code: RouterError).
ROUTER_ERRORS: dict[int, type[RouterError]] = {
    400: RouterValueError,
    401: RouterAccessError,
    403: RouterAccessError,
    404: RouterLookupError,
}


__all__ = [
    "GpuOptionsError",
    "GpuRetriesExhaustedError",
    "GpuRoutingError",
    "GpuTaskTimeoutError",
    "IdentityError",
    "QuotaExceededError",
    "RouterAccessError",
    "RouterError",
    "RouterLookupError",
    "RouterValueError",
    "TaskCancelledError",
]
