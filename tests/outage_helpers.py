"""A scheduler and one GPU worker as real processes on loopback, to stop and bring back (outage tests).

The gateway's own outage test (tests/test_api_outage.py) adds a gateway to the same processes; the console's
and the CLI's (tests/test_outage_clients.py, tests/test_console.py) use them as they are.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from conftest import repo_config_data
from test_multinode import REPO, Procs, _signal_group, free_port, port_open


@dataclass
class Outage:
    procs: Procs
    port: int
    config_path: Path
    url: str
    tokens: dict[str, str]
    config: dict[str, Any]  # the cluster.yaml data both processes run with

    def client(self, who: str | None = "alice") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        # generous: a request that is not answered at all fails the test instead of hanging it
        return httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=30)

    def start_scheduler(self) -> None:
        args = ["scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--dashboard-address", "127.0.0.1:0"]
        self.procs.start("scheduler", [*args, "--preload", "scheduler_plugins.gpu_router", *self._config()])
        self.procs.wait_for(lambda: port_open(self.port), f"the scheduler on port {self.port}")

    def start_worker(self, name: str) -> None:
        address = f"tcp://127.0.0.1:{self.port}"
        args = ["worker", address, "--host", "127.0.0.1", "--name", name, "--nthreads", "2", "--no-dashboard"]
        args += ["--death-timeout", "120", "--preload", "altlas_dask.worker", "--altlas-gpu", "0", *self._config()]
        self.procs.start(name, args)

    def _config(self) -> list[str]:
        return ["--altlas-config", str(self.config_path)]


@contextlib.contextmanager
def scheduler_and_worker(
    tmp_path: Path, tokens: dict[str, str] | None = None, accounting: dict[str, Any] | None = None
) -> Iterator[Outage]:
    """``dask scheduler`` with the router and ``dask worker`` (simulated GPU 0); its config is a file
    (``accounting``: settings of that section besides its database, in ``tmp_path``)."""
    data = repo_config_data()
    database = str(tmp_path / "altlas.sqlite")
    data["accounting"] = {**data.get("accounting", {}), **(accounting or {}), "database": database}
    config_path = tmp_path / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTLAS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    procs = Procs(tmp_path, env)
    try:
        world = Outage(procs, free_port(), config_path, "", tokens or {}, data)
        world.start_scheduler()
        world.start_worker("worker-a")
        yield world
    finally:
        procs.stop()


def address(world: Outage) -> str:
    return f"tcp://127.0.0.1:{world.port}"


def kill_scheduler(world: Outage) -> None:
    """The scheduler dies (SIGKILL); its worker exits by itself once it loses it."""
    _signal_group(world.procs.procs["scheduler"], signal.SIGKILL)
    world.procs.procs["scheduler"].wait(timeout=30)


def bring_back(world: Outage, worker: str) -> None:
    """An operator restarts the cluster on the same address: the scheduler and a new worker."""
    for name in [n for n in world.procs.procs if n.startswith("worker")]:
        old = world.procs.procs.pop(name)
        _signal_group(old, signal.SIGKILL)
        old.wait(timeout=30)
    world.start_scheduler()
    world.start_worker(worker)
