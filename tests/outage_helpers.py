"""A scheduler and one GPU worker as real processes on loopback, to stop and bring back (outage tests).

The gateway's own outage test (tests/test_api_outage.py) adds a gateway to the same processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import yaml
from conftest import repo_config_data
from test_api_outage import Outage
from test_multinode import REPO, Procs, _signal_group, free_port


@contextlib.contextmanager
def scheduler_and_worker(tmp_path: Path) -> Iterator[Outage]:
    """``dask scheduler`` with the router and ``dask worker`` (simulated GPU 0); its config is a file."""
    data = repo_config_data()
    data.setdefault("accounting", {})["database"] = str(tmp_path / "altlas.sqlite")
    config_path = tmp_path / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTLAS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    procs = Procs(tmp_path, env)
    try:
        world = Outage(procs, free_port(), config_path, "", {})
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
