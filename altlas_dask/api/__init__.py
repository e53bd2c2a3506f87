"""The REST API gateway (FastAPI): ``create_app(scheduler_address, config)``; see docs/rest-api.md.

Imported lazily, so ``altlas-dask`` commands that do not serve the API never load FastAPI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApiSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from altlas_dask.api.app import create_app

        return create_app
    if name == "ApiSettings":
        from altlas_dask.api.settings import ApiSettings

        return ApiSettings
    raise AttributeError(name)
