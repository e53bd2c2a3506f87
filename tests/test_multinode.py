"""A "multi-node" cluster from the command line: real ``dask scheduler`` / ``dask worker`` processes on loopback.

This is the deployment path of the README: the router comes in through
``dask scheduler --preload scheduler_plugins.gpu_router`` and each worker binds its GPU through
``dask worker --preload altlas_dask.worker --altlas-gpu K`` (two separate worker processes, as two
nodes with one GPU each would run them). Nothing here uses the launcher: if a ``dask_setup``
preload breaks, these tests see what an operator would see.

Every process runs in its own session (process group), so the finalizer can terminate a nanny
together with the worker process it spawned, and kills whatever does not exit in time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import altlas_dask
from altlas_dask import run_on_gpu
from altlas_dask.resources import GPU_MEMORY_RESOURCE, GPU_RESOURCE

REPO = Path(__file__).resolve().parent.parent
CLUSTER_YAML = REPO / "cluster.yaml"
STARTUP_TIMEOUT = 120.0  # seconds; generous: CI has 2 cores and other suites may run beside this one
RESULT_TIMEOUT = 120.0
SMALL_WORK = 10.0  # GFLOP: 5 ms on a simulated A100


def dask_command() -> list[str]:
    """The ``dask`` console script of this interpreter's environment, else ``python -m dask``."""
    script = Path(sys.executable).with_name("dask")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dask"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Procs:
    """The subprocesses of one cluster, their log files, and how to stop them all."""

    workdir: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = (self.workdir / f"{name}.log").open("wb")
        try:
            proc = subprocess.Popen(
                [*dask_command(), *args],
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the nanny's worker child goes with it
            )
        finally:
            log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str, tail: int = 4000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else "(no log)"

    def logs(self) -> str:
        return "\n".join(f"----- {name} -----\n{self.log(name)}" for name in self.procs)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with status {proc.returncode}\n{self.logs()}")

    def wait_for(self, predicate, what: str, timeout: float = STARTUP_TIMEOUT):
        """Poll ``predicate`` until truthy; fail with the processes' logs on a deadline or a dead process."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            self.check_alive()
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:g}s waiting for {what}\n{self.logs()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM every process group (workers first), then SIGKILL what is left."""
        order = sorted(self.procs, key=lambda n: n == "scheduler")
        for name in order:
            _signal_group(self.procs[name], signal.SIGTERM)
        deadline = time.monotonic() + 20
        for name in order:
            proc = self.procs[name]
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            # the group may outlive its leader (a nanny's worker child): always make sure it is gone
            _signal_group(proc, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(timeout=10)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # start_new_session: the group id is the leader's pid


@pytest.fixture(scope="module")
def multinode(tmp_path_factory) -> Iterator[tuple[altlas_dask.Client, Procs]]:
    """``dask scheduler`` with the router preload plus two ``dask worker`` processes (GPU 0, GPU 1)."""
    workdir = tmp_path_factory.mktemp("multinode")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTLAS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    procs = Procs(workdir, env)
    client: altlas_dask.Client | None = None
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    config = ["--altlas-config", str(CLUSTER_YAML)]
    try:
        procs.start(
            "scheduler",
            [
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dashboard-address",
                "127.0.0.1:0",
                "--preload",
                "scheduler_plugins.gpu_router",
                *config,
            ],
        )
        procs.wait_for(lambda: port_open(port), f"the scheduler to listen on port {port}")
        for gpu in (0, 1):
            procs.start(
                f"worker-{gpu}",
                [
                    "worker",
                    address,
                    "--host",
                    "127.0.0.1",
                    "--name",
                    f"node{gpu}-gpu",
                    "--nthreads",
                    "4",
                    "--no-dashboard",
                    "--death-timeout",
                    "60",
                    "--preload",
                    "altlas_dask.worker.binding",
                    "--altlas-gpu",
                    str(gpu),
                    *config,
                ],
            )
        client = altlas_dask.Client(address, timeout=60, gpu_defaults={"user": "admin"})  # drains a GPU
        procs.wait_for(lambda: len(client.scheduler_info(n_workers=-1)["workers"]) == 2, "two workers to register")

        def router_installed(dask_scheduler) -> bool:  # local, so cloudpickle ships it by value
            return "altlas-router" in dask_scheduler.plugins and "altlas_gpus" in dask_scheduler.handlers

        if not client.run_on_scheduler(router_installed):
            pytest.fail(f"the scheduler preload did not install the GPU router\n{procs.log('scheduler')}")
        procs.wait_for(lambda: len(client.gpus()) == 2, "the router to register two GPUs")
        yield client, procs
    finally:
        if client is not None:
            client.close()
        procs.stop()


def run_tasks(client: altlas_dask.Client, n: int, **gpu_options) -> list[tuple[dict, dict]]:
    """``n`` run_on_gpu tasks; ``(result, explain)`` for each, with the result checked against the router."""
    futures = client.map(run_on_gpu, [SMALL_WORK] * n, pure=False, gpu_options=gpu_options)
    results = client.gather(futures, errors="raise")
    out = []
    for future, result in zip(futures, results, strict=True):
        info = client.explain(future)
        assert info["status"] == "completed", info
        assert info["outcome"] == "placed", info
        assert result["gpu"] == info["gpu"], f"ran on GPU {result['gpu']}, router placed it on GPU {info['gpu']}"
        out.append((result, info))
    return out


def test_both_gpus_registered_with_resources(multinode):
    client, _ = multinode
    gpus = sorted(client.gpus(), key=lambda g: g.id)
    assert [g.id for g in gpus] == [0, 1]
    assert all(g.status == "active" and g.simulated for g in gpus)
    assert gpus[0].worker != gpus[1].worker

    workers = client.scheduler_info(n_workers=-1)["workers"]
    assert set(workers) == {g.worker for g in gpus}
    for gpu in gpus:
        info = workers[gpu.worker]
        assert info["name"] == f"node{gpu.id}-gpu"  # --altlas-gpu K bound worker K to virtual GPU K
        assert info["resources"][GPU_RESOURCE] == 1
        assert info["resources"][GPU_MEMORY_RESOURCE] == gpu.memory_total_mb > 0
        assert info["metrics"]["altlas_gpu"]["uuid"] == gpu.uuid
    assert gpus[0].uuid != gpus[1].uuid


def test_round_robin_routes_across_both_gpus(multinode):
    client, _ = multinode
    runs = run_tasks(client, 20, strategy="round_robin")
    assert {info["strategy"] for _, info in runs} == {"round_robin"}
    assert {result["gpu"] for result, _ in runs} == {0, 1}


def test_result_stays_on_the_worker_of_its_gpu(multinode):
    client, _ = multinode
    by_id = {g.id: g.worker for g in client.gpus()}
    futures = client.map(run_on_gpu, [SMALL_WORK] * 6, pure=False, gpu_options={"strategy": "round_robin"})
    client.gather(futures)
    who_has = client.who_has(futures)
    for future in futures:
        assert list(who_has[future.key]) == [by_id[future.result()["gpu"]]]


def test_specific_gpu_id(multinode):
    client, _ = multinode
    runs = run_tasks(client, 6, specific_gpu_id=1)
    assert {result["gpu"] for result, _ in runs} == {1}
    assert {info["gpu"] for _, info in runs} == {1}


def test_drain_then_enable(multinode):
    client, _ = multinode
    try:
        reply = client.drain_gpu(0, reason="multinode test")
        assert reply["gpu"] == 0 and reply["draining"] is True
        assert {g.id: g.status for g in client.gpus()}[0] == "maintenance"

        drained = run_tasks(client, 10, strategy="round_robin")
        assert {result["gpu"] for result, _ in drained} == {1}
        assert all(info["rejected"].get("0") == "status maintenance" for _, info in drained), drained[0][1]
    finally:
        client.enable_gpu(0)

    assert {g.id: g.status for g in client.gpus()} == {0: "active", 1: "active"}
    enabled = run_tasks(client, 10, strategy="round_robin")
    assert {result["gpu"] for result, _ in enabled} == {0, 1}


def test_unknown_gpu_is_refused(multinode):
    client, _ = multinode
    with pytest.raises(altlas_dask.RouterError, match="unknown GPU 7"):
        client.drain_gpu(7)
