"""scheduler_plugins.autoscale: what the Dask operator's DaskAutoscaler reads, on a real cluster.

The router holds GPU tasks on the scheduler (``no-worker``, restricted to its placeholder address). They
do sit in ``Scheduler.unrunnable``, so Dask's own ``adaptive_target`` sees them, but as CPU occupancy in
Dask workers: with 14 tasks waiting for a GPU it asks for no more workers than it has. The installed
target counts GPU slots and pods; it is read the operator's two ways (HTTP ``/api/v1/adaptive_target``,
then the ``adaptive_target`` RPC). Tasks block on a ``distributed.Event``: no timing in the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dask
import pytest
from conftest import REPO, local_config, wait_for
from distributed import Event

from altlas_dask.ops.launcher import GpuCluster, start_cluster
from scheduler_plugins import autoscale

TASKS = 30
SLOTS = 8  # cluster.yaml: gpu.multi_gpu.max_concurrent_tasks_per_gpu


def block(name: str) -> str:
    Event(name).wait(timeout=300)
    return "done"


@pytest.fixture(scope="module")
def cluster() -> Iterator[GpuCluster]:
    config = local_config()
    assert config.routing().max_concurrent_tasks_per_gpu == SLOTS
    # the operator tries GET /api/v1/adaptive_target first; distributed serves that route only when asked
    routes = [*dask.config.get("distributed.scheduler.http.routes"), "distributed.http.scheduler.api"]
    with dask.config.set({"distributed.scheduler.http.routes": routes}):
        cluster = start_cluster(config, simulate=2, timeout=60)
    try:
        yield cluster
    finally:
        cluster.close()


def counts(dask_scheduler) -> dict[str, int]:
    from scheduler_plugins.autoscale import held_gpu_tasks

    return {
        "held": held_gpu_tasks(dask_scheduler),
        "unrunnable": len(dask_scheduler.unrunnable),
        "busy": sum(1 for ws in dask_scheduler.workers.values() if ws.processing),
        "dask_target": dask_scheduler.adaptive_target(),
    }


def http_target(cluster: GpuCluster) -> int:
    url = cluster.dashboard_link.replace("/status", "/api/v1/adaptive_target")
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)["workers"]


def test_held_tasks_drive_the_installed_target(cluster: GpuCluster):
    client = cluster.client(gpu_defaults={"user": "autoscale"})
    event = Event("altlas-autoscale-go", client=client)
    futures = [client.submit(block, event.name, pure=False, gpu_options={"memory_mb": 0}) for _ in range(TASKS)]
    try:
        before = wait_for(
            lambda: (c := client.run_on_scheduler(counts))["held"] == TASKS - 2 * SLOTS and c["busy"] == 2 and c,
            timeout=60,
            what="16 tasks placed on the 2 GPUs and 14 held",
        )
        # Dask's own target: the held tasks are unrunnable, yet it asks for no more than the 2 workers it has
        assert before["unrunnable"] == before["held"] == 14
        assert before["dask_target"] <= 2

        client.run_on_scheduler(lambda dask_scheduler: autoscale.install(dask_scheduler, SLOTS) and None)
        # 2 busy GPUs + ceil(14 / 8) = 4 GPUs: pods of 1, 2 (inferred: both workers on one host) and 4 GPUs
        with dask.config.set({autoscale.CONFIG_KEY: 1}):
            assert http_target(cluster) == 4
            assert client.sync(client.scheduler.adaptive_target) == 4  # the operator's fallback, the RPC
        with dask.config.set({autoscale.CONFIG_KEY: None}):
            assert http_target(cluster) == 2
        with dask.config.set({autoscale.CONFIG_KEY: 4}):
            assert http_target(cluster) == 1
    finally:
        event.set()
    assert client.gather(futures) == ["done"] * TASKS
    with dask.config.set({autoscale.CONFIG_KEY: 1}):
        wait_for(lambda: http_target(cluster) == 0, timeout=30, what="the target to drop to 0 when idle")
    client.close()


def test_bad_settings_are_named(cluster: GpuCluster):
    client = cluster.client()
    try:
        with pytest.raises(ValueError, match="tasks_per_gpu must be >= 1"):
            client.run_on_scheduler(lambda dask_scheduler: autoscale.install(dask_scheduler, 0))
        with dask.config.set({autoscale.CONFIG_KEY: 0}), pytest.raises(ValueError, match="altlas.gpus-per-pod"):
            client.run_on_scheduler(lambda dask_scheduler: autoscale.gpus_per_pod(dask_scheduler))
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_preload_beside_the_router(tmp_path: Path):
    """``dask scheduler --preload scheduler_plugins.gpu_router --preload scheduler_plugins.autoscale``."""
    port, dashboard = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTLAS_")}
    env.update(
        ALTLAS_CONFIG=str(REPO / "cluster.yaml"),
        ALTLAS_ACCOUNTING__DATABASE=":memory:",
        DASK_ALTLAS__GPUS_PER_POD="4",
        PYTHONPATH=str(REPO),
    )
    log = tmp_path / "scheduler.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--dashboard-address", f"127.0.0.1:{dashboard}", "--preload", "scheduler_plugins.gpu_router",
             "--preload", "scheduler_plugins.autoscale"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
        return False

    try:
        wait_for(up, timeout=120, what="the scheduler")
        from distributed import Client

        with Client(f"tcp://127.0.0.1:{port}", timeout=30) as client:
            assert client.sync(client.scheduler.adaptive_target) == 0  # the operator's RPC path
            assert client.run_on_scheduler(lambda dask_scheduler: "altlas-router" in dask_scheduler.plugins)
            assert client.run_on_scheduler(
                lambda dask_scheduler: dask_scheduler.adaptive_target.__module__ == "scheduler_plugins.autoscale"
            )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
