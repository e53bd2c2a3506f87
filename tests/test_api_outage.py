"""The gateway through a scheduler outage longer than Dask's own reconnection window (30 s), under load.

Real processes on loopback: ``dask scheduler`` with the router preload and one ``dask worker`` (GPU 0),
as an operator runs them; the gateway under uvicorn in a thread of this process. The scheduler is
killed, every endpoint is hit in a loop for longer than 30 s (the loop is the load), then the scheduler
(and a worker) come back on the same address and the same gateway serves again, without a restart.

No latency is measured: while the connection is down every endpoint answers 503 at once from the gateway's
connection state, without a network call (and a router call to a hung, still connected scheduler is
bounded by ``ApiSettings.rpc_timeout``); the test checks that every request is answered, and answered 503
with ``Retry-After`` and a reason, while the scheduler is away.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from conftest import repo_config_data, wait_for
from test_api import free_socket
from test_multinode import REPO, Procs, _signal_group, free_port, port_open

from altlas_dask.api import ApiSettings, create_app
from altlas_dask.api.auth import KeyStore
from altlas_dask.config import build_config

OUTAGE_S = 35.0  # longer than the client's 30 s reconnection window (ApiSettings.connect_timeout)


@dataclass
class Outage:
    procs: Procs
    port: int
    config_path: Path
    url: str
    tokens: dict[str, str]

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


@pytest.fixture
def outage(tmp_path) -> Iterator[Outage]:
    data = repo_config_data()
    data.setdefault("accounting", {})["database"] = str(tmp_path / "altlas.sqlite")
    config_path = tmp_path / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTLAS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    procs = Procs(tmp_path, env)
    keys = KeyStore(str(tmp_path / "altlas.sqlite"))
    tokens = {"alice": keys.create("alice")[1], "admin": keys.create("admin", "admin")[1]}
    port = free_port()
    server = thread = sock = None
    try:
        world = Outage(procs, port, config_path, "", tokens)
        world.start_scheduler()
        world.start_worker("worker-a")
        config = build_config(data)
        app = create_app(f"tcp://127.0.0.1:{port}", config, ApiSettings(warm_up=False), keys=keys)
        sock = free_socket()
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        world.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        procs.wait_for(lambda: server.started, "the API server")
        yield world
    finally:
        if server is not None:
            server.should_exit = True
            thread.join(timeout=30)
        if sock is not None:
            sock.close()
        procs.stop()


def served(c: httpx.Client) -> dict[str, Any] | None:
    """A generation answered with its text, or None (not yet: 503 while the cluster comes back)."""
    r = c.post("/predict", json={"text": "The ", "max_length": 4, "temperature": 0.0, "wait": 20})
    return r.json() if r.status_code == 200 and r.json()["status"] == "completed" else None


def assert_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    assert int(r.headers["retry-after"]) > 0
    body = r.json()
    assert "scheduler" in body["reason"] and body["error"], body


def test_gateway_survives_a_long_scheduler_outage_under_load(outage: Outage):
    with outage.client() as c, outage.client("admin") as admin, outage.client(None) as anonymous:
        wait_for(lambda: served(c), timeout=120, interval=0.5, what="the first generation")
        long = c.post("/route", json={"model_id": "modelled", "payload": {"work_gflop": 2000 * 120}}).json()
        lost = long["request_id"]

        _signal_group(outage.procs.procs["scheduler"], signal.SIGKILL)
        wait_for(lambda: anonymous.get("/health").status_code == 503, timeout=30, what="the outage to be seen")
        requests = [
            lambda: anonymous.get("/health"),
            lambda: c.get("/gpus"),
            lambda: c.post("/predict", json={"text": "x", "max_length": 4}),
            lambda: c.post("/predict", json={"text": "x", "max_length": 4, "wait": 5}),
            lambda: c.get(f"/task/{lost}"),
            lambda: c.get("/tasks"),
            lambda: c.post("/batch_predict", json={"batch": [{"text": "a"}, {"text": "b"}]}),
            lambda: c.post("/route", json={"model_id": "modelled", "payload": {"work_gflop": 1}}),
            lambda: c.get("/metrics"),
            lambda: admin.put("/admin/user/alice/quota", json={"requests_per_day_limit": 1000}),
        ]
        answered = 0
        end = time.monotonic() + OUTAGE_S  # the outage's length, not a latency bound
        while time.monotonic() < end:
            assert_unavailable(requests[answered % len(requests)]())
            answered += 1
        assert answered >= len(requests)

        old = outage.procs.procs.pop("worker-a")  # an operator restarts the cluster: scheduler and worker
        _signal_group(old, signal.SIGKILL)
        old.wait(timeout=30)
        outage.start_scheduler()
        outage.start_worker("worker-b")
        wait_for(lambda: served(c), timeout=120, interval=0.5, what="the gateway to serve again")
        health = anonymous.get("/health")
        assert health.status_code == 200 and health.json()["reconnects"] >= 1, health.text
        task = c.get(f"/route/{lost}").json()
        assert task["status"] == "failed" and "scheduler" in task["error"], task
        assert c.get("/gpus").status_code == 200
