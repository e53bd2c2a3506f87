"""Scale-out on loopback (issue 16): a TLS scheduler and two "nodes" of GPU workers as separate ``dask`` CLI
processes, the REST gateway in front, a batch across every GPU; one node is killed, work goes on on the other,
and when the node re-joins its GPUs come back under the same ids and take work again."""

from __future__ import annotations

import functools
import operator
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from test_api import free_socket
from test_multinode import REPO, Procs, free_port, port_open

from altlas_dask.accounting.api_keys import KeyStore
from altlas_dask.api import ApiSettings, create_app
from altlas_dask.client.gpu_client import Client
from altlas_dask.config import load_config
from altlas_dask.ops.certs import client_security, init_ca, issue

NODES = {"node-a": (0, 1), "node-b": (2, 3)}


# The work: a builtin the scheduler and the workers unpickle without importing this test module (whose imports,
# test_api's among them, take seconds of CPU on their event loops: at load 5 a GPU went silent and unresponsive).
double = functools.partial(operator.mul, 2)


class ScaleOut:
    def __init__(self, workdir: Path) -> None:
        self.certs = workdir / "certs"
        init_ca(self.certs)
        for node in ("scheduler-node", *NODES):
            issue(self.certs, node, "node")
        issue(self.certs, "gateway", "service")
        issue(self.certs, "alice")
        self.database = str(workdir / "altlas.sqlite")
        self.config = workdir / "cluster.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "accounting": {"database": self.database, "flush_interval": 0.05},
                    "simulation": {"gpus": [{"name": "Sim", "memory_mb": 16000, "count": 4}]},
                    "security": {
                        "identity": "tls",
                        "ca_file": str(self.certs / "ca.pem"),
                        "client_cert": str(self.certs / "gateway.pem"),
                        "client_key": str(self.certs / "gateway-key.pem"),
                        "delegates": ["gateway"],
                    },
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("ALTLAS_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.procs = Procs(workdir, env)
        self.port = free_port()
        self.address = f"tls://127.0.0.1:{self.port}"

    def tls(self, node: str) -> list[str]:
        c = self.certs
        return ["--tls-ca-file", str(c / "ca.pem"), "--tls-cert", str(c / f"{node}.pem"),
                "--tls-key", str(c / f"{node}-key.pem")]  # fmt: skip

    def start_scheduler(self) -> None:
        self.procs.start(
            "scheduler",
            ["scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", str(self.port), "--dashboard-address",
             "127.0.0.1:0", *self.tls("scheduler-node"), "--preload", "scheduler_plugins.gpu_router",
             "--altlas-config", str(self.config)],
        )  # fmt: skip
        self.procs.wait_for(lambda: port_open(self.port), f"the TLS scheduler to listen on port {self.port}")

    def start_node(self, node: str) -> None:
        for gpu in NODES[node]:
            self.procs.start(
                f"{node}-gpu{gpu}",
                ["worker", self.address, "--host", "127.0.0.1", "--nthreads", "2", "--no-dashboard",
                 "--death-timeout", "60", *self.tls(node), "--preload", "altlas_dask.worker", "--altlas-gpu",
                 str(gpu), "--altlas-config", str(self.config)],
            )  # fmt: skip

    def kill_node(self, node: str) -> None:
        for gpu in NODES[node]:
            proc = self.procs.procs.pop(f"{node}-gpu{gpu}")
            os.killpg(proc.pid, signal.SIGKILL)  # no goodbye: the node is gone
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def scale_out(tmp_path_factory) -> Iterator[tuple[ScaleOut, str, str]]:
    cluster = ScaleOut(tmp_path_factory.mktemp("scale-out"))
    keys = KeyStore(cluster.database)
    token = keys.create("alice")[1]
    try:
        cluster.start_scheduler()
        for node in NODES:
            cluster.start_node(node)
        app = create_app(cluster.address, load_config(cluster.config), ApiSettings(warm_up=False), keys=keys)
        sock = free_socket()
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            cluster.procs.wait_for(lambda: server.started, "the gateway")
            yield cluster, f"http://127.0.0.1:{sock.getsockname()[1]}/api/v1", token
        finally:
            server.should_exit = True
            thread.join(timeout=30)
    finally:
        cluster.procs.stop()


def gpus_by_id(alice: Client) -> dict[int, tuple[str, str]]:
    return {g.id: (g.uuid, g.worker) for g in alice.gpus()}


def chunk_gpus(alice: Client, batch) -> set[int]:
    return {alice.explain(f)["gpu"] for f in batch.futures}


def test_a_node_leaves_and_rejoins_under_the_same_gpu_ids(scale_out):
    cluster, url, token = scale_out
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    with Client(cluster.address, security=client_security(cluster.certs, "alice"), timeout=60) as alice, api:
        procs = cluster.procs
        before = procs.wait_for(lambda: len(g := gpus_by_id(alice)) == 4 and g, "four GPUs over TLS")
        # every GPU reported and active (a worker that registered is not yet one the router places on)
        procs.wait_for(lambda: [g.status for g in alice.gpus()] == ["active"] * 4, "four active GPUs")
        listed = procs.wait_for(lambda: len(r := api.get("/gpus").json().get("gpus", [])) == 4 and r, "REST /gpus")
        assert sorted(g["id"] for g in listed) == [0, 1, 2, 3]

        batch = alice.submit_batch(range(64), double, gpu_options={"strategy": "round_robin"})
        assert batch.result(timeout=120) == [2 * i for i in range(64)]
        shown = (batch.sizes, batch.gpus, [(g.id, g.status) for g in alice.gpus()])
        assert chunk_gpus(alice, batch) == {0, 1, 2, 3}, f"a batch across every GPU of both nodes: {shown}"

        cluster.kill_node("node-b")
        procs.wait_for(lambda: set(gpus_by_id(alice)) == {0, 1}, "node-b's GPUs to leave the router")
        during = alice.submit_batch(range(32), double, gpu_options={"strategy": "round_robin"})
        assert during.result(timeout=120) == [2 * i for i in range(32)]
        assert chunk_gpus(alice, during) <= {0, 1}, "work goes on on node-a"

        cluster.start_node("node-b")
        after = procs.wait_for(lambda: len(g := gpus_by_id(alice)) == 4 and g, "node-b to re-join")
        for gpu in (2, 3):
            assert after[gpu][0] == before[gpu][0], "the same GPU (UUID) under the same id"
            assert after[gpu][1] != before[gpu][1], "on its new worker process"
        pinned = alice.submit(double, 21, pure=False, gpu_options={"specific_gpu_id": 3})
        assert pinned.result(timeout=120) == 42 and alice.explain(pinned)["gpu"] == 3
        routed = api.post(
            "/route",
            json={"model_id": "modelled", "payload": {"work_gflop": 5}, "gpu_options": {"specific_gpu_id": 2},
                  "wait": 60},
        )  # fmt: skip
        assert routed.status_code == 200, routed.text
        done = procs.wait_for(
            lambda: (r := api.get(f"/route/{routed.json()['request_id']}").json()).get("status") == "completed" and r,
            "the REST request on the re-joined GPU",
        )
        assert done["assigned_gpu"] == "gpu_2" and done["result"]["uuid"] == before[2][0], done
