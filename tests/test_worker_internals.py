"""The one place altlas-dask touches distributed's internal worker state (altlas_dask.gpus.dask_worker_internals),
and the public paths around it: real in-process Scheduler and Worker servers, simulated GPUs."""

from __future__ import annotations

import asyncio

import pytest
from conftest import CLUSTER_YAML, local_config
from distributed import Scheduler, Worker

from altlas_dask.gpus.dask_worker_internals import advertise_before_registration, advertised_resources
from altlas_dask.resources import GPU_MEMORY_RESOURCE, GPU_RESOURCE
from altlas_dask.worker import PLUGIN_NAME, GpuWorkerPlugin

A100 = {GPU_RESOURCE: 1.0, GPU_MEMORY_RESOURCE: 81920.0}
T4 = {GPU_RESOURCE: 1.0, GPU_MEMORY_RESOURCE: 16384.0}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


def test_command_line_preload_advertises_the_gpu_before_registration():
    """``dask worker --preload altlas_dask.worker --altlas-gpu 2``: the scheduler meets it with its GPU resources."""

    async def main():
        argv = ["--altlas-gpu", "2", "--altlas-simulate", "4", "--altlas-config", str(CLUSTER_YAML)]
        async with (
            Scheduler(host="127.0.0.1", dashboard_address=":0") as scheduler,
            Worker(scheduler.address, preload=["altlas_dask.worker"], preload_argv=[argv], nthreads=1) as worker,
        ):
            registered = dict(scheduler.workers[worker.address].resources)
            return registered, advertised_resources(worker), worker.plugins[PLUGIN_NAME].device.index

    registered, advertised, gpu = run(main())
    assert registered == advertised == T4  # cluster.yaml: GPUs 2 and 3 are T4 16GB
    assert gpu == 2


def test_plugin_added_to_a_running_worker_tells_the_scheduler_through_set_resources():
    async def main():
        async with (
            Scheduler(host="127.0.0.1", dashboard_address=":0") as scheduler,
            Worker(scheduler.address, nthreads=1) as worker,
        ):
            assert dict(scheduler.workers[worker.address].resources) == {}
            await worker.plugin_add(GpuWorkerPlugin(local_config(), simulated_index=0, simulate_count=4))
            with pytest.raises(RuntimeError, match="registered already"):
                advertise_before_registration(worker, A100)
            return dict(scheduler.workers[worker.address].resources)

    assert run(main()) == A100


def test_resources_given_in_the_worker_spec_are_left_alone():
    """The launcher's path: the spec carries the resources; the plugin writes nothing."""

    async def main():
        async with (
            Scheduler(host="127.0.0.1", dashboard_address=":0") as scheduler,
            Worker(
                scheduler.address,
                nthreads=1,
                resources=dict(T4),
                plugins={GpuWorkerPlugin(local_config(), simulated_index=3, simulate_count=4)},
            ) as worker,
        ):
            return dict(scheduler.workers[worker.address].resources), worker.state.available_resources

    registered, available = run(main())
    assert registered == T4 and available == T4
