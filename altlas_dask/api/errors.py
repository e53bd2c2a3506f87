"""Every error the REST API returns is JSON ``{"error": "..."}`` with a meaningful status; never a traceback.

=====================================  ======  ===========================================================
cause                                  status  notes
=====================================  ======  ===========================================================
malformed JSON, wrong type, bad value   400     the message names the field: ``max_length: ...``
``GpuOptionsError``                     400     ``invalid gpu_options.strategy: unknown strategy 'x' ...``
missing / unknown / revoked API key     401     with ``WWW-Authenticate: Bearer``
non-admin key on an admin route         403
another user's task or batch            404     ids of other users' work are not revealed (see docs)
unknown task, batch, request or GPU     404
task already finished (cancel)          409
body over the size limit                413
``QuotaExceededError``                  429     with ``Retry-After`` (seconds until the limit resets)
no GPU available at all                 503     every GPU drained, failed or gone
scheduler unreachable                   503     the gateway lost its connection to the cluster
anything unexpected                     500     ``{"error": "internal error"}``; the traceback goes to the log
=====================================  ======  ===========================================================
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from altlas_dask.errors import GpuRoutingError, RouterError
from altlas_dask.options import GpuOptionsError
from altlas_dask.scheduling.quotas import QuotaExceededError

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with its HTTP status; ``extra`` fields join ``error`` in the body."""

    def __init__(self, http_status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = http_status, message, headers or {}, extra


def error_response(http_status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=http_status, headers=headers)


def quota_error(exc: QuotaExceededError, **extra: Any) -> ApiError:
    retry = exc.retry_after()
    return ApiError(
        429,
        str(exc),
        {"Retry-After": str(retry)},
        limit=exc.limit_name,
        reset_time=exc.reset_time,
        retry_after=retry,
        **extra,
    )


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts
    return ".".join(parts) or "body"


def describe_validation(exc: RequestValidationError) -> str:
    """``"max_length: Input should be less than or equal to 1024 (got 5000)"``; one entry per bad field."""
    parts = []
    for err in exc.errors()[:10]:
        kind = err.get("type", "")
        field = _field(err.get("loc", ()))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if kind == "json_invalid":
            parts.append(f"body: invalid JSON ({err.get('ctx', {}).get('error', msg)})")
        elif kind == "missing":
            parts.append(f"{field}: field required")
        elif kind == "extra_forbidden":
            parts.append(f"{field}: unknown field")
        else:
            value = err.get("input")
            shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
            if len(shown) > 60:
                shown = shown[:57] + "..."
            parts.append(f"{field}: {msg} (got {shown})")
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    """Map every exception to a JSON error response."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, describe_validation(exc))

    @app.exception_handler(GpuOptionsError)
    async def gpu_options_error(request: Request, exc: GpuOptionsError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(GpuRoutingError)
    async def routing_error(request: Request, exc: GpuRoutingError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(QuotaExceededError)
    async def quota_exceeded(request: Request, exc: QuotaExceededError) -> JSONResponse:
        err = quota_error(exc)
        return error_response(err.status, err.message, err.headers, **err.extra)

    @app.exception_handler(RouterError)
    async def router_error(request: Request, exc: RouterError) -> JSONResponse:
        code = exc.code if 400 <= exc.code < 600 else 500
        return error_response(code, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(OSError)
    async def unreachable(request: Request, exc: OSError) -> JSONResponse:
        logger.warning("cluster unreachable during %s %s: %s", request.method, request.url.path, exc)
        return error_response(503, "the cluster's scheduler is unreachable; retry later", {"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error in %s %s", request.method, request.url.path)
        return error_response(500, "internal error")
