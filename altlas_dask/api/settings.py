"""The gateway's tuning (``altlas-dask api`` exposes the useful ones)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ApiSettings:
    """Gateway tuning; the CLI exposes the useful ones."""

    max_tasks: int = 10_000  # finished tasks whose results the gateway keeps
    max_batches: int = 10_000
    placement_wait: float = 1.0  # seconds a submission waits for the router's record before answering "queued"
    gpu_cache_s: float = 0.5
    max_body_bytes: int = 4 * 1024 * 1024
    key_cache_ttl: float = 10.0
    connect_timeout: float = 30.0
    warm_up: bool = True  # load the model on every GPU worker at start-up
    rpc_timeout: float = 5.0  # seconds a router call may take before the request answers 503 (a hung scheduler)
    watch_interval: float = 0.25  # seconds between checks of the scheduler connection
    reconnect_timeout: float = 2.0  # seconds one reconnection attempt may take (then the next one starts)
    retry_after_s: int = 5  # Retry-After of a 503 while the scheduler is away
