"""The README's multi-node path with mutual TLS: real ``dask scheduler`` / ``dask worker`` processes started
with Dask's own TLS flags and node certificates, the router preload reading ``security.identity: tls``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_multinode import REPO, Procs, free_port, port_open

from altlas_dask import RouterError, run_on_gpu
from altlas_dask.client.gpu_client import Client
from altlas_dask.errors import IdentityError
from altlas_dask.ops.certs import client_security, init_ca, issue


@pytest.fixture(scope="module")
def tls_nodes(tmp_path_factory) -> Iterator[tuple[str, Path, Procs]]:
    workdir = tmp_path_factory.mktemp("tls-multinode")
    certs = workdir / "certs"
    init_ca(certs)
    issue(certs, "scheduler-node", "node")
    issue(certs, "gpu-node", "node")
    for user in ("alice", "bob"):
        issue(certs, user)
    config = workdir / "cluster.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "accounting": {"database": str(workdir / "altlas.sqlite")},
                "simulation": {"gpus": [{"name": "Sim", "memory_mb": 16000, "count": 1}]},
                "security": {"identity": "tls", "ca_file": str(certs / "ca.pem")},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTLAS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    procs = Procs(workdir, env)
    port = free_port()
    address = f"tls://127.0.0.1:{port}"

    def tls(node: str) -> list[str]:
        return ["--tls-ca-file", str(certs / "ca.pem"), "--tls-cert", str(certs / f"{node}.pem"),
                "--tls-key", str(certs / f"{node}-key.pem")]  # fmt: skip

    try:
        procs.start(
            "scheduler",
            ["scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address",
             "127.0.0.1:0", *tls("scheduler-node"), "--preload", "scheduler_plugins.gpu_router",
             "--altlas-config", str(config)],
        )  # fmt: skip
        procs.wait_for(lambda: port_open(port), f"the TLS scheduler to listen on port {port}")
        procs.start(
            "worker-0",
            ["worker", address, "--host", "127.0.0.1", "--nthreads", "2", "--no-dashboard", "--death-timeout",
             "60", *tls("gpu-node"), "--preload", "altlas_dask.worker", "--altlas-gpu", "0",
             "--altlas-config", str(config), "--preload-nanny", "scheduler_plugins.gate"],
        )  # fmt: skip
        yield address, certs, procs
    finally:
        procs.stop()


def test_multinode_tls_binds_users_and_refuses_impersonation(tls_nodes):
    address, certs, procs = tls_nodes
    with (
        Client(address, security=client_security(certs, "alice"), timeout=60) as alice,
        Client(address, security=client_security(certs, "bob"), timeout=60) as bob,
    ):
        procs.wait_for(lambda: len(alice.gpus()) == 1, "the router to register the GPU over TLS")
        mine = alice.submit(run_on_gpu, 1.0, pure=False)
        assert mine.result(timeout=120)["gpu"] == 0
        assert alice.explain(mine)["user"] == "alice"
        forged = bob.submit(run_on_gpu, 1.0, pure=False, gpu_options={"user": "alice"})
        with pytest.raises(IdentityError, match="identifies you as 'bob'"):
            forged.result(timeout=120)
        with pytest.raises(RouterError, match="'bob' is not an admin"):
            bob.drain_gpu(0)
        worker = alice.gpus()[0].worker  # the command-line worker's own gate, and its nanny's (docs/security.md)
        nanny = bob.scheduler_info()["workers"][worker]["nanny"]
        with pytest.raises(PermissionError, match="'get_data' needs a node certificate: 'bob'"):
            bob.sync(bob.rpc(worker).get_data, keys=[mine.key])
        with pytest.raises(PermissionError, match="'kill' needs a node certificate: 'bob'"):
            bob.sync(bob.rpc(nanny).kill)
    with pytest.raises(IdentityError, match="uses mutual TLS and needs a client certificate"):
        Client(address, timeout=5)  # no certificate configured: one clear error before any connection attempt
