"""The router's GPU list as the gateway reads it: cached for ``gpu_cache_s`` (the 503 "no GPU" check, the batch
split and the request batcher's capacity), fresh for the GPU endpoints."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from altlas_dask.api.errors import ApiError
from altlas_dask.api.link import SchedulerLink
from altlas_dask.api.registry import ascii_digits


def parse_gpu_id(ref: str) -> int:
    text = str(ref).strip().lower().removeprefix("gpu_").removeprefix("gpu-")
    if not ascii_digits(text) or len(text) > 6:
        raise ApiError(404, f"unknown GPU {ref!r}: a GPU id is a number (0-9 digits), optionally after 'gpu_'")
    return int(text)


class GpuList:
    """The router's GPUs (heartbeat + in-flight work + drain), read through ``link``."""

    def __init__(self, link: SchedulerLink) -> None:
        self.link = link
        self.rows: list[dict[str, Any]] = []
        self.queued = 0  # tasks the router holds, as of the last read
        self._read_at = -math.inf
        self._lock = asyncio.Lock()

    async def read(self, max_age: float | None = None) -> list[dict[str, Any]]:
        """The GPU list, at most ``max_age`` seconds old (default ``gpu_cache_s``)."""
        max_age = self.link.settings.gpu_cache_s if max_age is None else max_age
        if time.monotonic() - self._read_at > max_age:
            async with self._lock:
                if time.monotonic() - self._read_at > max_age:
                    answer = await self.link.ask(self.link.router().gpus())
                    self.rows, self.queued = answer["gpus"], answer.get("queued", 0)
                    self._read_at = time.monotonic()
        return self.rows

    def active(self) -> int:
        """Active GPUs in the cached list (at least 1): how many batches the request batcher keeps in flight."""
        return max(1, sum(1 for g in self.rows if g["status"] == "active"))

    def invalidate(self, *_: Any) -> None:
        self._read_at = -math.inf

    async def one(self, ref: str) -> dict[str, Any]:
        gpu_id = parse_gpu_id(ref)
        for g in await self.read(max_age=0):
            if g["id"] == gpu_id:
                return g
        raise ApiError(404, f"unknown GPU {ref!r}; this cluster has GPUs {[g['id'] for g in self.rows]}")
