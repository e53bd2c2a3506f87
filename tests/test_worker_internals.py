"""The one place altlas-dask touches distributed's internal worker state (altlas_dask.gpus.dask_worker_internals),
and the public paths around it: real in-process Scheduler and Worker servers, simulated GPUs."""

from __future__ import annotations

import asyncio

import pytest
from conftest import CLUSTER_YAML, local_config
from distributed import Scheduler, Worker
from distributed.preloading import process_preloads

from altlas_dask.gpus.dask_worker_internals import advertise_before_registration, advertised_resources
from altlas_dask.resources import GPU_MEMORY_RESOURCE, GPU_RESOURCE
from altlas_dask.worker.binding import PLUGIN_NAME, GpuWorkerPlugin

A100 = {GPU_RESOURCE: 1.0, GPU_MEMORY_RESOURCE: 81920.0}
T4 = {GPU_RESOURCE: 1.0, GPU_MEMORY_RESOURCE: 16384.0}

# The preload argv dask-cuda 26.10 builds for `dask cuda worker --preload altlas_dask.worker`: CUDAWorker gives
# each Nanny preload=[*preload, "dask_cuda.initialize"], preload_argv=[*preload_argv, "--create-cuda-context"]
# (dask_cuda/cuda_worker.py; LocalCUDACluster does the same in local_cuda_cluster.py), and distributed's
# process_preloads hands a flat argv to every preload.
DASK_CUDA_PRELOAD_ARGV = ["--create-cuda-context"]


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


def test_dask_cuda_worker_preload_arguments_bind_the_gpu(monkeypatch):
    """distributed's own process_preloads with dask-cuda's argv: the worker registers with its GPU bound.

    Before the fix the click command rejected ``--create-cuda-context``; distributed logged it and the worker
    registered with no GPU and no resources. The real GPU is not here: ALTLAS_GPU_INDEX picks a simulated one.
    """
    monkeypatch.setenv("ALTLAS_GPU_INDEX", "2")
    monkeypatch.setenv("ALTLAS_CONFIG", str(CLUSTER_YAML))

    async def main():
        async with Scheduler(host="127.0.0.1", dashboard_address=":0") as scheduler:
            worker = Worker(scheduler.address, nthreads=1)
            worker.preloads = process_preloads(worker, ["altlas_dask.worker"], DASK_CUDA_PRELOAD_ARGV)
            async with worker:
                return dict(scheduler.workers[worker.address].resources), worker.plugins[PLUGIN_NAME].device.index

    registered, gpu = run(main())
    assert (registered, gpu) == (T4, 2)


@pytest.mark.parametrize(
    ("argv", "named"),
    [(["--altlas-gpus", "1"], "No such option '--altlas-gpus'"), (["--altlas-gpu", "one"], "'one' is not a valid")],
)
def test_bad_preload_arguments_stop_the_worker_instead_of_being_logged(argv, named):
    """distributed's preload runner logs an Exception from the click command and starts the worker anyway.

    (``dask worker`` checks the argv it is given before starting; the ``--create-cuda-context`` dask-cuda adds
    after that check reached the preload unchecked, as these do here.)"""
    (preload,) = process_preloads(object(), ["altlas_dask.worker"], argv)  # no server: parsing fails first
    with pytest.raises(SystemExit, match="altlas-dask: bad arguments for --preload altlas_dask.worker") as info:
        preload.start().send(None)
    assert named in str(info.value)


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


def test_container_health_checks_every_gpu_worker_and_fails_without_a_binding_or_on_a_lost_gpu(tmp_path, monkeypatch):
    """deploy/docker/healthcheck.py over the workers of one container (each on its own HTTP port), through
    the /altlas/health route each GPU worker serves: distributed's own /health says ok in every case below."""
    import subprocess
    import sys

    from conftest import REPO

    monkeypatch.setenv("ALTLAS_HEALTH_DIR", str(tmp_path))

    def healthcheck() -> subprocess.CompletedProcess:
        env = {"ALTLAS_HEALTH_DIR": str(tmp_path), "ALTLAS_EXPECTED_WORKERS": "2", "PATH": ""}
        script = REPO / "deploy" / "docker" / "healthcheck.py"
        return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=30)

    async def main():
        results = []
        async with (
            Scheduler(host="127.0.0.1", dashboard_address=":0") as scheduler,
            Worker(scheduler.address, nthreads=1, dashboard_address=":0") as first,
            Worker(scheduler.address, nthreads=1, dashboard_address=":0") as second,
        ):
            await first.plugin_add(GpuWorkerPlugin(local_config(), simulated_index=0, simulate_count=4))
            results.append(await asyncio.to_thread(healthcheck))  # the second worker has no GPU bound
            await second.plugin_add(GpuWorkerPlugin(local_config(), simulated_index=1, simulate_count=4))
            results.append(await asyncio.to_thread(healthcheck))  # both bound
            second.plugins[PLUGIN_NAME].device.inject("lost")
            results.append(await asyncio.to_thread(healthcheck))  # the second one's GPU is lost
            lost_url = f"http://127.0.0.1:{second.http_server.port}/altlas/health"
        return results, lost_url

    (unbound, both, lost), lost_url = run(main())
    assert unbound.returncode == 1 and "1 of 2 GPU workers have registered" in unbound.stderr
    assert both.returncode == 0, both.stderr
    assert lost.returncode == 1 and lost_url in lost.stderr and "503" in lost.stderr
    assert list(tmp_path.glob("*.url")) == [], "closed workers take their URL back"
