"""The REST gateway: ``create_app(scheduler_address, config)`` -> a FastAPI app serving ``/api/v1``.

The app is a Dask client of the cluster (one asynchronous ``altlas_dask.Client``, connected at
start-up in the app's own event loop); it keeps no queue of its own. OpenAPI docs: ``/docs``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from altlas_dask.accounting.api_keys import KeyStore, KeyVerifier
from altlas_dask.api import errors
from altlas_dask.api.gateway import Gateway
from altlas_dask.api.metrics import HttpStats
from altlas_dask.api.routes import admin, cluster, predict, route, tasks
from altlas_dask.api.settings import ApiSettings
from altlas_dask.config import AltlasConfig, load_config

logger = logging.getLogger(__name__)
PREFIX = "/api/v1"
DESCRIPTION = """GPU-aware inference and batch jobs on a Dask cluster.

Authenticate every request (except `/api/v1/health`) with `Authorization: Bearer <api_key>`;
create a key with `altlas-dask keys create --user NAME [--admin]`. Errors are JSON `{"error": "..."}`:
400 bad input (the message names the field), 401 no/bad key, 403 not allowed, 404 unknown (or another
user's) task, batch or GPU, 409 conflict, 413 body too large, 429 quota (with `Retry-After`),
503 no GPU available.
"""


class GatewayMiddleware:
    """Pure ASGI (cheap per request): rejects bodies over the size limit with 413, times every response."""

    def __init__(self, app: ASGIApp, stats: HttpStats, max_body_bytes: int) -> None:
        self.app, self.stats, self.max_body = app, stats, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_body
                except ValueError:
                    too_big = False
                if too_big:
                    response = errors.error_response(413, f"request body over {self.max_body} bytes")
                    await response(scope, receive, send)
                    self.stats.record(413, time.perf_counter() - start)
                    return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise StarletteHTTPException(413, f"request body over {self.max_body} bytes")
            return message

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, timed_send)
        finally:
            self.stats.record(status, time.perf_counter() - start)


DOCS_ASSETS = "/docs-assets"


def api_index(app: FastAPI) -> dict[str, Any]:
    """What ``GET /api/v1`` answers: where the docs are and every operation (method, path, summary)."""
    operations = [
        {"method": method.upper(), "path": path, "summary": op.get("summary", "")}
        for path, item in app.openapi()["paths"].items()
        for method, op in item.items()
    ]
    return {"name": app.title, "docs": "/docs", "openapi": app.openapi_url, "operations": operations}


def create_app(
    scheduler_address: str | None = None,
    config: AltlasConfig | None = None,
    settings: ApiSettings | None = None,
    *,
    keys: KeyVerifier | None = None,
) -> FastAPI:
    """The gateway app for the cluster at ``scheduler_address`` (default: ``cluster.scheduler_address``).

    API keys live in their own file (``config.accounting.api_keys``) unless ``keys`` is given.
    """
    config = config or load_config()
    settings = settings or ApiSettings()
    address = scheduler_address or config.cluster.scheduler_address
    keys = keys or KeyStore.of(config, cache_ttl=settings.key_cache_ttl)
    stats = HttpStats()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = await Gateway.connect(address, config, settings)
        app.state.gateway = gateway
        logger.info("gateway connected to %s", address)
        try:
            yield
        finally:
            app.state.gateway = None
            await gateway.close()

    app = FastAPIOffline(  # /docs: Swagger UI 5 (reads OpenAPI 3.1) from the package's own files, no CDN
        title="altlas-dask REST API",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        static_url=DOCS_ASSETS,
    )
    app.state.keys = keys
    app.state.http_stats = stats
    app.state.settings = settings
    app.state.gateway = None
    errors.install(app)
    for module in (predict, tasks, route, cluster, admin):
        app.include_router(module.router, prefix=PREFIX)
    app.add_middleware(GatewayMiddleware, stats=stats, max_body_bytes=settings.max_body_bytes)

    @app.get("/", include_in_schema=False)
    async def root() -> dict[str, Any]:
        return {"name": "altlas-dask REST API", "api": PREFIX, "docs": "/docs"}

    @app.get(PREFIX, include_in_schema=False)
    async def index() -> dict[str, Any]:
        return api_index(app)

    return app
