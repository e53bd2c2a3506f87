"""Start a Dask cluster with one worker process per GPU (real or simulated)."""

from __future__ import annotations

import copy
import functools
import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.config
from distributed import LocalCluster, SchedulerPlugin
from distributed.deploy.spec import SpecCluster

from altlas_dask.client.gpu_client import Client
from altlas_dask.config import (
    MAX_LOCAL_WORKERS,
    MAX_SIMULATED_GPUS,
    AltlasConfig,
    ConfigError,
    config_source,
    load_config,
)
from altlas_dask.gpus.errors import GpuUnavailableError
from altlas_dask.gpus.nvml import NvmlInventory
from altlas_dask.gpus.simulated import SimulatedInventory
from altlas_dask.gpus.state import GpuState
from altlas_dask.ops.certs import NANNY_GATE, dask_security
from altlas_dask.worker.binding import gpu_worker_options

logger = logging.getLogger(__name__)


def detect_gpus(config: AltlasConfig, simulate: int | None = None) -> tuple[list[GpuState], bool]:
    """``(gpus, simulated)``: real GPUs through NVML, else the simulated pool (logged)."""
    simulate = simulate if simulate is not None else config.cluster.simulate
    det = config.gpu.detection
    if simulate is None and det.enabled and config.gpu.enabled:
        try:
            inventory = NvmlInventory(
                min_compute_capability=det.min_compute_capability, max_temperature=det.max_temperature
            )
            return inventory.gpus(), False
        except GpuUnavailableError as exc:
            logger.warning("%s: falling back to the simulated GPU pool of %s", exc, config_source(config))
    pool = SimulatedInventory(config, count=simulate)
    gpus = pool.gpus()
    if not gpus:
        raise GpuUnavailableError(
            f"no simulated GPU meets gpu.detection.min_compute_capability={det.min_compute_capability}"
        )
    logger.info("using a simulated pool of %d GPUs", len(gpus))
    return gpus, True


@dataclass
class GpuCluster:
    """A running cluster and the GPUs it was started on."""

    cluster: SpecCluster
    gpus: list[GpuState]
    simulated: bool
    config: AltlasConfig
    _clients: list[Client] = field(default_factory=list)

    @property
    def scheduler_address(self) -> str:
        return self.cluster.scheduler_address

    @property
    def dashboard_link(self) -> str:
        return self.cluster.dashboard_link

    def _repr_html_(self) -> str:
        from altlas_dask.client.notebook import cluster_html

        return cluster_html(self)

    def __repr__(self) -> str:
        kind = "simulated" if self.simulated else "NVML"
        return f"GpuCluster({len(self.gpus)} {kind} GPUs, scheduler {self.scheduler_address}, {self.dashboard_link})"

    def client(self, **kwargs: Any) -> Client:
        client = Client(self.cluster, **kwargs)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.cluster.close()

    def __enter__(self) -> GpuCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dask_settings(config: AltlasConfig) -> dict[str, Any]:
    return {"distributed.scheduler.work-stealing": config.cluster.work_stealing}


def start_cluster(
    config: AltlasConfig | None = None,
    *,
    simulate: int | None = None,
    router: bool = True,
    scheduler_plugins: Sequence[SchedulerPlugin] = (),
    scheduler_address: str | None = None,
    dashboard_address: str | None = None,
    timeout: float = 120,
) -> GpuCluster:
    """One Dask worker per GPU, each bound to its GPU and advertising ``GPU``/``gpu-mem-mb``.

    Real GPUs start under ``dask_cuda.LocalCUDACluster``; otherwise a
    ``distributed.LocalCluster`` with one worker process per virtual GPU.
    ``scheduler_address``/``dashboard_address`` override the config (``":0"`` picks a free port).
    ``router=False`` starts the cluster without the GPU router (plain Dask placement).
    """
    config = config or load_config()
    plugins = list(scheduler_plugins)
    if router:
        from scheduler_plugins.gpu_router import GpuRouter

        plugins.insert(0, GpuRouter(config))
    gpus, simulated = detect_gpus(config, simulate)
    if simulated and len(gpus) > MAX_LOCAL_WORKERS:
        raise ConfigError(
            f"simulation.gpus describes {len(gpus)} virtual GPUs; `up` starts one Dask worker process per virtual GPU"
            f" and at most {MAX_LOCAL_WORKERS} on one machine (a pool of up to {MAX_SIMULATED_GPUS} is for"
            " `altlas-dask replay`); lower the counts or pass --simulate N"
        )
    if simulated and config.cluster.protocol != "tcp":
        raise ConfigError(
            f"cluster.protocol={config.cluster.protocol!r} needs real GPUs and dask-cuda, but NVML sees none here "
            "(this cluster would run on the simulated pool); use cluster.protocol: tcp"
        )
    host, _, port = (scheduler_address or config.cluster.scheduler_address).rpartition(":")
    common: dict[str, Any] = {
        "host": host or "127.0.0.1",
        "scheduler_port": int(port or 0),
        "dashboard_address": dashboard_address or config.cluster.dashboard_address,
        "threads_per_worker": config.routing().max_concurrent_tasks_per_gpu,
        "scheduler_kwargs": {"plugins": plugins},
    }
    security = dask_security(config.security, "node")  # security.identity: tls -> mutual TLS on every comm
    if security is not None:
        common["security"] = security
        common["preload_nanny"] = [NANNY_GATE]  # the workers' own gate comes with their GPU plugin
    with dask.config.set(_dask_settings(config)):
        if simulated:  # workers rebuild the pool detect_gpus saw (its size, not the filtered count)
            pool_size = simulate if simulate is not None else config.cluster.simulate
            cluster = _simulated_cluster(config, gpus, common, pool_size)
        else:
            cluster = _cuda_cluster(config, gpus, common)
        cluster.wait_for_workers(len(gpus), timeout=timeout)
    logger.info("cluster up: scheduler %s, dashboard %s", cluster.scheduler_address, cluster.dashboard_link)
    return GpuCluster(cluster=cluster, gpus=gpus, simulated=simulated, config=config)


class _OneSpecPerGpu(SpecCluster):
    """Sits between ``LocalCluster`` and ``SpecCluster``: swaps the identical worker specs that
    ``LocalCluster`` computes for one spec per GPU, so the cluster starts them itself (a worker that
    fails to start fails the constructor) and ``scale``/restarts reuse :meth:`gpu_spec`."""

    gpus: list[GpuState]

    def gpu_spec(self, gpu: GpuState, base: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def __init__(self, *args: Any, worker: dict[str, Any], workers: dict[Any, Any] | None = None, **kwargs: Any):
        workers = dict(self.gpu_spec(gpu, worker) for gpu in self.gpus)
        super().__init__(*args, worker=worker, workers=workers, **kwargs)

    def new_worker_spec(self) -> dict[str, dict[str, Any]]:
        for gpu in self.gpus:
            name, spec = self.gpu_spec(gpu, self.new_spec)
            if name not in self.worker_spec:
                return {name: spec}
        raise ValueError(f"cannot scale beyond the {len(self.gpus)} GPUs of this cluster")


class SimulatedGpuCluster(LocalCluster, _OneSpecPerGpu):
    """A ``LocalCluster`` with one worker process per virtual GPU, named ``gpu-K``.

    Like dask-cuda's ``LocalCUDACluster``, each worker's differences (its GPU plugin and its
    resources) are composed into its own spec, so ``scale`` and restarts bring back the same GPU
    under the same worker name. Public constructor arguments only: no edits of the spec from outside.
    """

    def __init__(
        self, config: AltlasConfig, gpus: Sequence[GpuState], pool_size: int | None = None, **kwargs: Any
    ) -> None:
        self.altlas_config, self.gpus, self.pool_size = config, list(gpus), pool_size
        super().__init__(n_workers=0, processes=True, **kwargs)

    def gpu_spec(self, gpu: GpuState, base: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        spec = copy.deepcopy(base)
        name = f"gpu-{gpu.id}"
        options = gpu_worker_options(self.altlas_config, gpu, simulate_count=self.pool_size)
        spec["options"].update(name=name, **options)
        return name, spec


def _simulated_cluster(
    config: AltlasConfig, gpus: list[GpuState], common: dict[str, Any], pool_size: int | None = None
) -> LocalCluster:
    return SimulatedGpuCluster(config, gpus, pool_size, **common)


#: The UCX comms for Dask (distributed's own ``ucx`` comm was removed; ``distributed-ucxx`` provides it).
UCX_PACKAGES = (
    "distributed-ucxx-cu12 (CUDA 12) or distributed-ucxx-cu13 (CUDA 13), or distributed-ucxx from conda-forge"
)


def cuda_cluster_options(
    config: AltlasConfig, common: dict[str, Any], *, ucx_installed: bool | None = None
) -> dict[str, Any]:
    """The keyword arguments for dask-cuda's ``LocalCUDACluster`` beyond the GPUs: ``common`` plus the
    ``cluster.protocol`` (``ucx``: ``protocol="ucx"``, and ``enable_nvlink`` when cluster.yaml sets it;
    left unset, UCX picks its transports itself, NVLink included, as dask-cuda recommends).
    ``ucx_installed``: whether ``distributed_ucxx`` is importable (looked up when None)."""
    options = dict(common)
    c = config.cluster
    if c.protocol == "ucx":
        if ucx_installed is None:
            ucx_installed = importlib.util.find_spec("distributed_ucxx") is not None
        if not ucx_installed:
            raise GpuUnavailableError(
                f"cluster.protocol='ucx' needs the UCX comms for Dask, which are not installed: {UCX_PACKAGES}"
            )
        options["protocol"] = "ucx"
        if c.enable_nvlink is not None:
            options["enable_nvlink"] = c.enable_nvlink
    return options


def _cuda_cluster(config: AltlasConfig, gpus: list[GpuState], common: dict[str, Any]) -> SpecCluster:
    """Only reached once NVML has seen a GPU, so importing dask-cuda is safe here."""
    options = cuda_cluster_options(config, common)
    try:
        from altlas_dask.gpus.cuda_cluster import GpuCUDACluster
    except ImportError as exc:
        raise GpuUnavailableError(
            f"NVML sees {len(gpus)} GPU(s) but dask-cuda is not importable ({exc}); "
            "install the GPU extra: pip install 'altlas-dask[gpu]'"
        ) from exc
    return GpuCUDACluster(functools.partial(gpu_worker_options, config), gpus, **options)
