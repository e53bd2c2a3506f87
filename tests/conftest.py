"""Shared fixtures: the repo's configuration, a polling helper and ONE session-wide 4-GPU cluster.

Starting a cluster costs a few seconds (CI has 2 cores), so every test that needs the
default heterogeneous pool of cluster.yaml (2x A100 80GB + 2x T4 16GB) shares ``gpu_cluster``.
Tests that damage a cluster (fault injection) start their own small one.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import dask
import pytest
import yaml
from distributed import Client

from altlas_dask.config import AltlasConfig, build_config
from altlas_dask.ops.launcher import GpuCluster, start_cluster

REPO = Path(__file__).resolve().parent.parent
CLUSTER_YAML = REPO / "cluster.yaml"
LOCAL_ADDRESSES = {"scheduler_address": "127.0.0.1:0", "dashboard_address": "127.0.0.1:0"}

T = TypeVar("T")

pytest_plugins = ["console_helpers"]  # the console's browser fixtures, for the test_console*.py files

# Tests never touch the real state directory: one throw-away home for the whole session (inherited by every
# subprocess; XDG_DATA_HOME covers the ones started with the ALTLAS_* variables removed).
TEST_STATE = Path(tempfile.mkdtemp(prefix="altlas-tests-"))
os.environ["ALTLAS_HOME"] = str(TEST_STATE / "home")
os.environ["XDG_DATA_HOME"] = str(TEST_STATE / "xdg")
atexit.register(shutil.rmtree, TEST_STATE, ignore_errors=True)

# Worker processes fork from one server that imported distributed once (Dask's `forkserver` method, what
# distributed's own test suite uses), instead of each spawning a fresh interpreter that imports it again: the
# same Nanny-managed worker processes, about half the suite's CPU (docs/design.md "Test suite speed"). Set in
# the environment too, so the clusters of CLI subprocesses (`altlas-dask up`, `dask worker`) fork the same way.
os.environ["DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD"] = "forkserver"
dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})


# `make test` runs the suite on parallel workers (pytest-xdist, whole files per worker: module-scoped clusters
# start once). The files holding a test of half a minute or more start first, so the run does not end waiting
# for one long file that started last. Measured on the 2-core machine (docs/design.md, "Test suite speed").
LONG_FILES = (
    "test_api_outage.py",
    "test_console_outage.py",
    "test_console.py",
    "test_console_totals.py",
    "test_core_invariants.py",
    "test_gpu_check.py",
    "test_first_hour.py",
    "test_observability.py",
    "test_scaleout.py",
    "test_outage_clients.py",
    "test_cli.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long files first (a stable sort: each file's own order stays)."""
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))


@pytest.fixture(autouse=True)
def main_module_left_alone() -> Iterator[None]:
    """A test must leave ``sys.modules["__main__"]`` as it found it: multiprocessing's spawn re-imports it in
    every child, so a Streamlit script left there (AppTest installs its page as ``__main__``) would run inside
    each worker process started afterwards, and a Nanny's restarted worker would not come back."""
    main = sys.modules["__main__"]
    yield
    assert sys.modules["__main__"] is main, f"the test left {sys.modules['__main__']!r} as __main__"


def repo_config_data() -> dict[str, Any]:
    """The parsed repo cluster.yaml (a fresh copy each call)."""
    return copy.deepcopy(yaml.safe_load(CLUSTER_YAML.read_text()))


def local_config(data: dict[str, Any] | None = None, **cluster: Any) -> AltlasConfig:
    """A validated config whose scheduler and dashboard listen on free local ports.

    ``data`` defaults to the repo's cluster.yaml; read without environment overrides
    so an ``ALTLAS_*`` variable in the CI environment cannot change the tests.
    """
    if data is None:
        data = repo_config_data()
        data["accounting"]["database"] = ":memory:"  # tests keep no accounting between runs
    else:
        data = copy.deepcopy(data)
    data["cluster"] = {**data.get("cluster", {}), **LOCAL_ADDRESSES, **cluster}
    return build_config(data)


def free_port() -> int:
    """A loopback port nothing listens on right now (for a process that must be told its port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.1, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; fail (not hang) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def outcomes(futures: list[Any], refusal: type[BaseException], refused: str = "refused") -> list[str]:
    """Each future's outcome in order: "ok", or ``refused`` when its result raised ``refusal``."""
    found = []
    for future in futures:
        try:
            future.result(timeout=60)
            found.append("ok")
        except refusal:
            found.append(refused)
    return found


def scraped_metrics(cluster: GpuCluster, containing: str) -> list[str]:
    """The ``altlas_*`` lines of the cluster's ``/metrics``, once a scrape contains ``containing``."""
    import httpx

    url = cluster.dashboard_link.replace("/status", "/metrics")

    def scraped() -> str | None:
        text = httpx.get(url, timeout=30).text
        return text if containing in text else None

    text = wait_for(scraped, what=f"{containing} in {url}")
    return [line for line in text.splitlines() if line.startswith("altlas_")]


def cli_command() -> list[str]:
    """The installed ``altlas-dask`` console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("altlas-dask")
    return [str(script)] if script.exists() else [sys.executable, "-m", "altlas_dask.cli.main"]


def cli_env() -> dict[str, str]:
    """The environment for CLI subprocesses: no ALTLAS_* leaking in (but the session's home), a wide table."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTLAS_") or k == "ALTLAS_HOME"}
    env["COLUMNS"] = "250"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def altlas(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``altlas-dask --config <repo cluster.yaml> ARGS`` and capture its output."""
    return subprocess.run(
        [*cli_command(), "--config", str(CLUSTER_YAML), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
    )


def table_rows(output: str) -> list[dict[str, str]]:
    """The rows of a rich table as {column title: cell text}."""
    header: list[str] | None = None
    rows = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("┃") and header is None:
            header = [cell.strip() for cell in line.strip("┃").split("┃")]
        elif line.startswith("│") and header is not None:
            rows.append(dict(zip(header, [c.strip() for c in line.strip("│").split("│")], strict=True)))
    assert header is not None, f"no table in:\n{output}"
    return rows


def nvml_sees_a_gpu() -> bool:
    """True where the real NVML library loads and reports at least one device."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    try:
        return pynvml.nvmlDeviceGetCount() > 0
    finally:
        pynvml.nvmlShutdown()


@pytest.fixture(scope="session")
def repo_config() -> AltlasConfig:
    return local_config()


@pytest.fixture(scope="session")
def gpu_cluster(repo_config: AltlasConfig) -> Iterator[GpuCluster]:
    """The default heterogeneous pool of cluster.yaml, one worker process per virtual GPU."""
    cluster = start_cluster(repo_config, simulate=4, timeout=60)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def dask_client(gpu_cluster: GpuCluster) -> Iterator[Client]:
    """A plain ``distributed.Client`` (``workers=`` allowed) on the shared cluster."""
    from altlas_dask.client.live import live_gpus

    with Client(gpu_cluster.scheduler_address, timeout=30) as client:
        # Every worker reports its GPU with its heartbeat; wait until all four have done so.
        wait_for(lambda: len(live_gpus(client)) == 4, what="4 GPU heartbeats")
        yield client


@contextlib.contextmanager
def certificate_clients(address: str, certs: Path) -> Iterator[Callable[..., Client]]:
    """``make(name, cls=altlas_dask.Client)``: a client of ``address`` acting as certificate ``certs/<name>.pem``
    (mutual TLS); every client made is closed on exit."""
    from altlas_dask.client.gpu_client import Client as AltlasClient
    from altlas_dask.ops.certs import client_security

    clients: list[Client] = []

    def make(name: str, cls: type[Client] = AltlasClient, **kwargs: Any) -> Client:
        client = cls(address, security=client_security(certs, name), timeout=30, **kwargs)
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            client.close()
