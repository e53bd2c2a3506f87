"""Read the GPU states that workers report to the scheduler with each heartbeat."""

from __future__ import annotations

from distributed import Client

from altlas_dask.gpus.state import GpuState
from altlas_dask.worker.binding import METRIC_NAME


def live_gpus(client: Client) -> list[GpuState]:
    """Every GPU worker's last reported state, by GPU id."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    states = [GpuState.from_dict(w["metrics"][METRIC_NAME]) for w in workers if METRIC_NAME in w["metrics"]]
    return sorted(states, key=lambda s: s.id)


def gpu_workers(client: Client) -> dict[int, str]:
    """GPU id -> worker address."""
    return {s.id: s.worker for s in live_gpus(client) if s.worker}
