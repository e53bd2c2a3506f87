"""Bind a Dask worker to its GPU, advertise it as resources and report it with heartbeats.

Used three ways, all ending in :class:`GpuWorkerPlugin`:
the launcher composes the plugin and the GPU resources into each worker's spec
(:func:`gpu_worker_options`); ``dask worker --preload altlas_dask.worker --altlas-gpu K``
(simulated GPU K) and ``dask cuda worker --preload altlas_dask.worker`` (the real GPU
dask-cuda gave the process) install it from the command line.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import click
from distributed import WorkerPlugin, get_worker

from altlas_dask.config import AltlasConfig, load_config
from altlas_dask.gpus import dask_worker_internals
from altlas_dask.gpus.device import GpuDevice, NvmlGpu
from altlas_dask.gpus.state import GpuState, lost_gpu
from altlas_dask.resources import gpu_resources
from altlas_dask.worker import health as worker_health

logger = logging.getLogger(__name__)

PLUGIN_NAME = "altlas-gpu"
METRIC_NAME = "altlas_gpu"


class GpuWorkerPlugin(WorkerPlugin):
    """Owns the worker's device: ``simulated_index`` for a virtual GPU, else the real one.

    A real GPU is the one ``uuid`` names (a ``GPU-`` or ``MIG-`` UUID), else the first of ``CUDA_VISIBLE_DEVICES``.
    """

    name = PLUGIN_NAME

    def __init__(
        self,
        config: AltlasConfig,
        simulated_index: int | None = None,
        simulate_count: int | None = None,
        uuid: str | None = None,
    ):
        self.config = config
        self.simulated_index = simulated_index
        self.simulate_count = simulate_count
        self.uuid = uuid
        self.device: GpuDevice | None = None

    def _make_device(self) -> GpuDevice:
        if self.simulated_index is not None:
            from altlas_dask.gpus.simulated import SimulatedInventory

            pool = SimulatedInventory(self.config, count=self.simulate_count)
            if not 0 <= self.simulated_index < len(pool.specs):
                raise ValueError(
                    f"virtual GPU {self.simulated_index} does not exist: the simulated pool has "
                    f"{len(pool.specs)} GPUs (0..{len(pool.specs) - 1})"
                )
            return pool.devices[self.simulated_index]
        return _real_device(self.config, self.uuid)

    async def setup(self, worker) -> None:
        self.device = device = self._make_device()
        device.cancellation.still_wanted = lambda key: dask_worker_internals.still_executing(worker, key)
        state = device.state()
        worker.metrics[METRIC_NAME] = self.metric
        if self.config.security.identity == "tls":  # only the cluster's nodes talk to a worker (handler_policy)
            from scheduler_plugins.gate import install_worker_gate

            install_worker_gate(worker)
        worker_health.serve(worker, PLUGIN_NAME, state.uuid)
        logger.info("worker %s bound to GPU %d (%s, %s)", worker.name, state.id, state.name, state.uuid)
        resources = gpu_resources(state.memory_total_mb)
        advertised = dask_worker_internals.advertised_resources(worker)
        if all(advertised.get(k) == v for k, v in resources.items()):
            return  # the cluster's worker spec gave them (the launcher's path)
        if worker.status.name == "running":  # installed after registration: tell the scheduler
            await worker.set_resources(**resources)
        else:  # a command-line worker's preload, before registration
            dask_worker_internals.advertise_before_registration(worker, resources)

    def teardown(self, worker) -> None:
        if self.device is not None:
            worker_health.withdraw(self.device.uuid)

    def transition(self, key, start, finish, **kwargs) -> None:
        """A task cancelled while executing (timeout, user, failover) stops its kernel."""
        if start == "executing" and finish in ("cancelled", "released", "forgotten") and self.device is not None:
            self.device.cancel(key)

    def metric(self, worker) -> dict[str, Any]:
        """The heartbeat payload: this GPU's state, or an ``error`` state if the device faulted."""
        return self.current_state(worker).to_dict()

    def current_state(self, worker=None) -> GpuState:
        assert self.device is not None
        address = worker.address if worker is not None else None
        try:
            return self.device.state().with_(worker=address)
        except Exception as exc:  # NVMLError_GpuIsLost and friends: show it as NVML would
            logger.warning("GPU %d unreadable: %s", self.device.index, exc)
            return lost_state(self.device, address, str(exc))


def gpu_worker_options(config: AltlasConfig, gpu: GpuState, *, simulate_count: int | None = None) -> dict[str, Any]:
    """What one GPU's worker spec adds to the cluster's: its plugin and its Dask resources.

    ``gpu.simulated``: the virtual GPU ``gpu.id`` of a pool of ``simulate_count``; else the real GPU ``gpu.uuid``.
    """
    if gpu.simulated:
        plugin = GpuWorkerPlugin(config, simulated_index=gpu.id, simulate_count=simulate_count)
    else:
        plugin = GpuWorkerPlugin(config, uuid=gpu.uuid)
    return {"plugins": {plugin}, "resources": gpu_resources(gpu.memory_total_mb)}


def lost_state(device: GpuDevice, worker: str | None, reason: str) -> GpuState:
    """The state to report for a GPU whose NVML queries fail."""
    return lost_gpu(device.index, device.uuid, reason, simulated=device.torch_device == "cpu", worker=worker)


def _real_device(config: AltlasConfig, uuid: str | None = None) -> NvmlGpu:
    """The GPU ``uuid`` names, else the first device of ``CUDA_VISIBLE_DEVICES`` (which dask-cuda rotates).

    Entries may be indices, ``GPU-`` UUIDs or ``MIG-`` ids; MIG slices are devices of their own.
    """
    from altlas_dask.gpus.nvml import NvmlInventory

    det = config.gpu.detection
    inventory = NvmlInventory(min_compute_capability=det.min_compute_capability, max_temperature=det.max_temperature)
    ref = uuid if uuid is not None else inventory.visible(os.environ.get("CUDA_VISIBLE_DEVICES"))[0].id
    return NvmlGpu(ref, inventory)


def current_device() -> GpuDevice:
    """The GPU of the worker running the calling task."""
    try:
        worker = get_worker()
    except ValueError:
        raise RuntimeError("not running inside a Dask worker: GPU work must be submitted to the cluster") from None
    plugin = worker.plugins.get(PLUGIN_NAME)
    if plugin is None or plugin.device is None:
        raise RuntimeError(f"worker {worker.address} has no GPU bound (start it with --preload altlas_dask.worker)")
    return plugin.device


class PreloadCommand(click.Command):
    """A preload's click command whose bad arguments stop the worker.

    distributed's preload runner logs any ``Exception`` from ``make_context`` (an unknown option, a bad
    value) and starts the worker anyway, without its GPU binding; this raises ``SystemExit`` instead.
    """

    def make_context(self, info_name, args, parent=None, **extra):
        given = " ".join(args)  # click consumes ``args``
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.ClickException as exc:
            fatal_preload(f"bad arguments for --preload {__name__} ({given!r})", exc)


@click.command(cls=PreloadCommand)
@click.option("--altlas-gpu", type=int, default=None, help="Virtual GPU index to simulate (default: the real GPU).")
@click.option("--altlas-config", type=click.Path(), default=None, help="cluster.yaml to read (default $ALTLAS_CONFIG).")
@click.option("--altlas-simulate", type=int, default=None, help="Size of the simulated pool (--simulate N).")
# dask-cuda appends this to the argv of every preload (dask_cuda/cuda_worker.py, local_cuda_cluster.py) for its
# own dask_cuda.initialize preload, which creates the context; here it is accepted and has nothing to do.
@click.option("--create-cuda-context/--no-create-cuda-context", default=False, hidden=True)
async def dask_setup(
    worker, altlas_gpu: int | None, altlas_config: str | None, altlas_simulate: int | None, create_cuda_context: bool
) -> None:
    """``dask worker --preload altlas_dask.worker [--altlas-gpu K]``; ``dask cuda worker --preload altlas_dask.worker``.

    Under ``dask cuda worker`` give settings through the environment (``ALTLAS_CONFIG``): dask-cuda passes
    the same preload arguments to its own ``dask_cuda.initialize``, which rejects ``--altlas-*``.
    """
    env_gpu = os.environ.get("ALTLAS_GPU_INDEX", "").strip()
    if altlas_gpu is None and env_gpu:
        if not env_gpu.isdigit():
            fatal_preload("GPU worker set-up failed", ValueError(f"ALTLAS_GPU_INDEX={env_gpu!r} is not a GPU index"))
        altlas_gpu = int(env_gpu)
    try:
        plugin = GpuWorkerPlugin(load_config(altlas_config), simulated_index=altlas_gpu, simulate_count=altlas_simulate)
        await worker.plugin_add(plugin=plugin, name=PLUGIN_NAME, catch_errors=False)
    except Exception as exc:
        fatal_preload("GPU worker set-up failed", exc)


def fatal_preload(what: str, exc: BaseException) -> None:
    """Stop the process: Dask's preload runner only logs an Exception, which would leave a half-set-up server."""
    logger.critical("%s: %s", what, exc)
    raise SystemExit(f"altlas-dask: {what}: {exc}") from exc
