"""A GPU-aware ``Scheduler.adaptive_target`` for the Dask operator's ``DaskAutoscaler``.

The operator asks the scheduler for a number of workers (``GET /api/v1/adaptive_target`` on the
dashboard, else the ``adaptive_target`` RPC) and sets it as the replica count of the default worker
group: a number of **pods**, each running ``dask cuda worker`` with ``gpus_per_pod`` GPUs (so as many
Dask workers). Dask's own target counts the router's held tasks (they sit in ``Scheduler.unrunnable``,
state ``no-worker``), but as CPU occupancy (duration estimates over ``target-duration``, divided by
threads per worker) and in Dask workers, not pods: on 4-GPU pods it asks for up to 4x too many, and
for short or unknown tasks too few. This target counts GPU slots instead::

    pods = max(pods with running GPU work,
               ceil((GPUs with running tasks + ceil(held GPU tasks / tasks per GPU)) / gpus_per_pod))

Install it with ``install(scheduler, tasks_per_gpu=...)`` from the router's start-up, or as a second
scheduler preload: ``dask scheduler --preload scheduler_plugins.gpu_router --preload scheduler_plugins.autoscale``.
``gpus_per_pod`` comes from Dask's config key ``altlas.gpus-per-pod`` (``DASK_ALTLAS__GPUS_PER_POD=4``,
which ``altlas-dask k8s render`` sets), else from the workers seen (most GPU workers on one host).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import dask
from distributed import Scheduler

from altlas_dask.config import load_config
from altlas_dask.resources import GPU_RESOURCE
from scheduler_plugins.dask_internals import held_tasks, replace_adaptive_target

logger = logging.getLogger(__name__)
CONFIG_KEY = "altlas.gpus-per-pod"


def held_gpu_tasks(scheduler: Scheduler) -> int:
    """Tasks the router holds on the scheduler waiting for a GPU (restricted to its placeholder address)."""
    return len(held_tasks(scheduler))


def gpus_per_pod(scheduler: Scheduler) -> int:
    """``altlas.gpus-per-pod`` from Dask's config, else the most GPU workers seen on one host, else 1."""
    configured = dask.config.get(CONFIG_KEY, None)
    if configured is not None:
        value = int(configured)
        if value < 1:
            raise ValueError(f"{CONFIG_KEY} must be >= 1 (got {configured!r})")
        return value
    per_host: dict[str, int] = {}
    for ws in scheduler.workers.values():
        if GPU_RESOURCE in ws.resources:
            per_host[ws.host] = per_host.get(ws.host, 0) + 1
    return max(per_host.values(), default=1)


def desired_pods(scheduler: Scheduler, tasks_per_gpu: int, per_pod: int | None = None) -> int:
    """GPU worker pods needed for the running and the held GPU work (0 when there is none)."""
    per_pod = per_pod or gpus_per_pod(scheduler)
    busy = [ws for ws in scheduler.workers.values() if GPU_RESOURCE in ws.resources and ws.processing]
    gpus = len(busy) + math.ceil(held_gpu_tasks(scheduler) / tasks_per_gpu)
    return max(len({ws.host for ws in busy}), math.ceil(gpus / per_pod))


def install(scheduler: Scheduler, tasks_per_gpu: int) -> Callable[..., int]:
    """Replace the scheduler's ``adaptive_target`` (method, HTTP route and RPC handler) with ``desired_pods``."""
    if tasks_per_gpu < 1:
        raise ValueError(f"tasks_per_gpu must be >= 1 (got {tasks_per_gpu!r})")

    def adaptive_target(target_duration: object = None) -> int:  # Dask's signature; the duration is not used
        return desired_pods(scheduler, tasks_per_gpu)

    replace_adaptive_target(scheduler, adaptive_target)
    return adaptive_target


async def dask_setup(scheduler: Scheduler) -> None:
    """``dask scheduler --preload scheduler_plugins.autoscale``: tasks per GPU from ``$ALTLAS_CONFIG``'s policy.

    Not a click command: Dask allows one click-configured preload per process, and that is the router's.
    """
    tasks_per_gpu = load_config().routing().max_concurrent_tasks_per_gpu
    install(scheduler, tasks_per_gpu)
    logger.info("altlas adaptive_target installed: %d tasks per GPU", tasks_per_gpu)
