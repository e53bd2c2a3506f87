"""REST over mutual TLS: the gateway is a delegate with its own certificate; every API key acts as its owner
(an admin key too, even when its user is not in quotas.admins), and bob's key gains nothing by naming alice."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from conftest import wait_for
from test_api import assert_error, free_socket
from test_identity import tls_config

from altlas_dask.accounting.api_keys import KeyStore
from altlas_dask.api import ApiSettings, create_app
from altlas_dask.config import build_config
from altlas_dask.ops.certs import init_ca, issue
from altlas_dask.ops.launcher import start_cluster

LONG = {"work_gflop": 1000 * 120, "memory_mb": 10}  # two minutes on a simulated GPU: only ever cancelled


@pytest.fixture(scope="module")
def rest(tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    root = tmp_path_factory.mktemp("certs")
    init_ca(root)
    issue(root, "node-1", "node")
    issue(root, "gateway", "service")
    database = str(tmp_path_factory.mktemp("acct") / "altlas.sqlite")
    data = tls_config(root, database)
    data["security"] |= {"client_cert": str(root / "gateway.pem"), "client_key": str(root / "gateway-key.pem")}
    config = build_config(data)
    keys = KeyStore(database)
    tokens = {user: keys.create(user)[1] for user in ("alice", "bob")}
    tokens["carol"] = keys.create("carol", "admin")[1]  # an admin key; carol is not in quotas.admins
    with start_cluster(config, timeout=60) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        app = create_app(cluster.scheduler_address, config, ApiSettings(warm_up=False), keys=keys)
        sock = free_socket()
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            wait_for(lambda: server.started, timeout=60, what="the API server")
            yield f"http://127.0.0.1:{sock.getsockname()[1]}/api/v1", tokens
        finally:
            server.should_exit = True
            thread.join(timeout=30)


def http(rest, who: str) -> httpx.Client:
    url, tokens = rest
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens[who]}"}, timeout=60)


def route(client: httpx.Client, payload: dict, **options) -> str:
    r = client.post("/route", json={"model_id": "modelled", "payload": payload, "gpu_options": options})
    assert r.status_code == 200, r.text
    return r.json()["request_id"]


def test_rest_bob_cannot_act_as_alice_or_admin(rest):
    with http(rest, "alice") as alice, http(rest, "bob") as bob:
        wait_for(lambda: len(alice.get("/gpus").json()["gpus"]) == 2, what="both GPUs through REST")
        long_id = route(alice, LONG, specific_gpu_id=0)
        assert_error(
            bob.post("/route", json={"model_id": "modelled", "payload": LONG, "gpu_options": {"user": "alice"}}), 403
        )
        assert_error(bob.get("/tasks", params={"user": "alice"}), 403)
        assert_error(bob.get("/user/alice/quota"), 403)
        assert_error(bob.delete(f"/admin/request/{long_id}"), 403)
        assert_error(bob.delete(f"/tasks/{long_id}"), 404)  # not his: it does not exist for him
        assert_error(bob.post("/admin/gpu/gpu_0/maintenance", json={}), 403)
        assert_error(bob.put("/admin/user/bob/quota", json={"requests_per_minute_limit": 1000}), 403)
        assert alice.delete(f"/tasks/{long_id}").status_code == 200


def test_an_admin_key_acts_and_is_audited_as_its_owner(rest):
    with http(rest, "alice") as alice, http(rest, "carol") as carol:
        long_id = route(alice, LONG, specific_gpu_id=1)
        r = carol.delete(f"/admin/request/{long_id}")
        assert r.status_code == 200, r.text
        task = wait_for(
            lambda: (t := alice.get(f"/route/{long_id}").json()).get("status") in ("cancelled", "failed") and t
        )
        assert "cancelled by carol" in str(task), task
        r = carol.put("/admin/user/bob/quota", json={"requests_per_minute_limit": 7})
        assert r.status_code == 200, r.text
        assert r.json()["by"] == "carol"
        r = carol.post("/admin/gpu/gpu_1/maintenance", json={})
        assert r.status_code == 200, r.text
        assert carol.delete("/admin/gpu/gpu_1/maintenance").status_code == 200


def test_an_admin_key_restarts_a_gpu_worker_over_tls(rest):
    """Dask's restart_workers is admin-level in tls mode: the gateway (a delegate) calls it for an admin key."""
    with http(rest, "carol") as carol, http(rest, "bob") as bob:
        assert_error(bob.post("/admin/gpu/gpu_0/restart", json={}), 403)
        r = carol.post("/admin/gpu/gpu_0/restart", json={"force": True})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "restarted" and r.json()["worker"] != r.json()["old_worker"]


def test_tasks_from_rest_run_as_the_keys_user(rest):
    with http(rest, "bob") as bob:
        request_id = route(bob, {"work_gflop": 1.0, "memory_mb": 10})
        done = wait_for(lambda: (t := bob.get(f"/route/{request_id}").json()).get("status") == "completed" and t)
        assert done["status"] == "completed"
        mine = bob.get("/tasks").json()
        assert request_id in str(mine["tasks"]), mine
        assert all("bob" in str(t) and "alice" not in str(t) for t in mine["tasks"].values()), mine


def test_gateway_certificate_must_be_a_delegate(tmp_path: Path):
    """The gateway's own name is what the router checks: a user certificate there cannot act for others."""
    from altlas_dask.config import Security
    from scheduler_plugins.identity import Identities, Identity

    identities = Identities(Security(identity="tls", delegates=("gateway",)))
    assert identities.task_options({"user": "alice"}, Identity("gateway", "service"), "c1") == {"user": "alice"}
    with pytest.raises(PermissionError, match="only the delegates"):
        identities.task_options({"user": "alice"}, Identity("bob", "user"), "c2")


def test_api_refuses_to_start_with_a_certificate_that_is_not_a_delegate(tmp_path: Path):
    from conftest import altlas

    init_ca(tmp_path)
    issue(tmp_path, "alice")
    sets = {
        "home": str(tmp_path / "state"),
        "security.identity": "tls",
        "security.ca_file": str(tmp_path / "ca.pem"),
        "security.client_cert": str(tmp_path / "alice.pem"),
        "security.client_key": str(tmp_path / "alice-key.pem"),
    }
    args = [item for key, value in sets.items() for item in ("--set", f"{key}={value}")]
    done = altlas(*args, "api", "--scheduler", "tls://127.0.0.1:9")
    assert done.returncode != 0
    assert "names 'alice', which is not in security.delegates" in done.stderr and "Traceback" not in done.stderr
