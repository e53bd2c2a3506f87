"""dask-cuda's ``LocalCUDACluster`` with each worker bound to its GPU in its own spec (real GPUs only).

Imported only once NVML has seen a GPU: importing dask-cuda fails on a machine without one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dask_cuda import LocalCUDACluster

from altlas_dask.gpus.state import GpuState

#: A GPU's worker options (``plugins``, ``resources``): the launcher passes ``altlas_dask.worker.binding``'s.
WorkerOptions = Callable[[GpuState], dict[str, Any]]


class GpuCUDACluster(LocalCUDACluster):
    """One worker per GPU (or MIG slice), ``CUDA_VISIBLE_DEVICES`` set to its UUID by dask-cuda.

    :meth:`new_worker_spec` adds the plugins and resources ``worker_options(gpu)`` gives (the launcher's:
    the altlas GPU plugin and the ``GPU``/``gpu-mem-mb`` resources) to dask-cuda's own per-worker spec (its
    plugins and env are kept), so restarts keep the binding. The inventory knows no worker: the options
    come in from the launcher.
    """

    def __init__(self, worker_options: WorkerOptions, gpus: Sequence[GpuState], **kwargs: Any) -> None:
        self.worker_options = worker_options
        self.gpus_by_uuid = {g.uuid: g for g in gpus}
        super().__init__(CUDA_VISIBLE_DEVICES=[g.uuid for g in gpus], n_workers=len(gpus), **kwargs)

    def new_worker_spec(self) -> dict[str, dict[str, Any]]:
        ((name, spec),) = super().new_worker_spec().items()  # name: the worker's CUDA_VISIBLE_DEVICES entry
        options = self.worker_options(self.gpus_by_uuid[name])
        spec["options"]["plugins"] = {*spec["options"].get("plugins", ()), *options["plugins"]}
        spec["options"]["resources"] = options["resources"]
        return {name: spec}
