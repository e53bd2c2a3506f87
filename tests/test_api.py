"""The REST API over real HTTP on loopback, against a real (simulated-GPU) cluster.

One module-scoped cluster of 2 virtual GPUs whose accounting database and API key file are files in a
temporary directory; the gateway runs under uvicorn in a thread on a free port and
every test talks to it with httpx.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from conftest import LOCAL_ADDRESSES, cli_command, cli_env, repo_config_data, wait_for
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from altlas_dask.accounting.api_keys import KeyStore
from altlas_dask.api import ApiSettings, create_app
from altlas_dask.client.gpu_client import Client
from altlas_dask.config import build_config
from altlas_dask.model import char_gru
from altlas_dask.ops.launcher import GpuCluster, start_cluster

LONG_GFLOP = 2000 * 120  # two minutes of modelled work on an A100: only ever cancelled


@dataclass
class Api:
    url: str
    cluster: GpuCluster
    keys: KeyStore
    database: str
    tokens: dict[str, str]
    app: Any = None

    def client(self, who: str | None = "alice", **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=60, **kwargs)


def free_socket() -> socket.socket:
    sock = socket.socket(
        socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
    )  # proto set: asyncio then sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[Api]:
    database = str(tmp_path_factory.mktemp("api") / "altlas.sqlite")
    data = repo_config_data()
    data["cluster"] = {**data.get("cluster", {}), **LOCAL_ADDRESSES}
    data.setdefault("accounting", {})["database"] = database
    data.setdefault("serving", {})["callbacks"] = {"allowed_hosts": ["127.0.0.1"], "backoff_s": 0.05}
    config = build_config(data)
    cluster = start_cluster(config, simulate=2, timeout=60)
    keys = KeyStore.of(config)  # accounting.api_keys: api_keys.sqlite beside the accounting database
    tokens = {user: keys.create(user)[1] for user in ("alice", "bob", "carol", "dave")}
    tokens["admin"] = keys.create("admin", "admin")[1]
    app = create_app(cluster.scheduler_address, config, ApiSettings(), keys=keys)
    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        wait_for(lambda: server.started, timeout=60, what="the API server")
        yield Api(url, cluster, keys, database, tokens, app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        cluster.close()


def poll_task(client: httpx.Client, task_id: str, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = client.get(f"/task/{task_id}").json()
        return body if body["status"] in ("completed", "failed", "cancelled") else None

    body = wait_for(done, timeout=timeout, interval=0.05, what=f"task {task_id}")
    assert body["status"] != "completed" or "result" in body, body  # a completed task always carries its result
    return body


def assert_error(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    for word in words:
        assert word in body["error"], body
    assert "Traceback" not in response.text
    return body


def start_long(client: httpx.Client, gpu: int = 1) -> str:
    payload = {"work_gflop": LONG_GFLOP, "memory_mb": 10}
    r = client.post(
        "/route", json={"model_id": "modelled", "payload": payload, "gpu_options": {"specific_gpu_id": gpu}}
    )
    assert r.status_code == 200, r.text
    return r.json()["request_id"]


# -- auth ----------------------------------------------------------------------------------------------


def test_health_docs_and_openapi(api: Api):
    with api.client(None) as c:
        assert c.get("/health").json()["status"] == "ok"
        spec = c.get("/openapi.json").json()
    for path in ("/api/v1/predict", "/api/v1/batch_predict", "/api/v1/task/{task_id}", "/api/v1/gpus"):
        assert path in spec["paths"]
    index = httpx.get(api.url + "/api/v1").json()  # the address `up` prints answers with the API's index
    assert index["docs"] == "/docs" and {"method": "GET", "path": "/api/v1/gpus"} in [
        {k: op[k] for k in ("method", "path")} for op in index["operations"]
    ]


def test_docs_page_renders_every_operation_in_a_browser(api: Api):
    """/docs in headless Chromium, offline (every request to another host is refused): Swagger UI reads the
    OpenAPI 3.1 that FastAPI serves and lists each of its operations."""
    from console_helpers import CHROMIUM, CHROMIUM_ARGS

    if CHROMIUM is None:
        pytest.skip("needs Debian chromium (make system-deps)")
    from playwright.sync_api import sync_playwright

    spec = httpx.get(api.url + "/api/v1/openapi.json").json()
    wanted = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            elsewhere: list[str] = []
            page.route(
                lambda url: not url.startswith(api.url),
                lambda route: (elsewhere.append(route.request.url), route.abort()),
            )
            page.goto(api.url + "/docs")
            page.locator(".opblock, .version-pragma").first.wait_for(timeout=120_000)  # operations, or the error
            shown = {
                (
                    block.locator(".opblock-summary-method").inner_text().strip(),
                    block.locator(".opblock-summary-path").get_attribute("data-path"),
                )
                for block in page.locator(".opblock").all()
            }
            text = page.locator("body").inner_text()
        finally:
            browser.close()
    assert "Unable to render" not in text and "Parser error" not in text, text[:500]
    assert not elsewhere, elsewhere
    assert wanted <= shown, wanted - shown


def test_missing_bad_and_revoked_keys_are_401(api: Api):
    with api.client(None) as c:
        r = c.get("/gpus")
        assert_error(r, 401, "missing API key")
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert_error(c.get("/gpus", headers={"Authorization": "Basic abc"}), 401)
        assert_error(c.get("/gpus", headers={"Authorization": "Bearer nope"}), 401, "invalid")
        forged = api.tokens["alice"][:-4] + "AAAA"
        assert_error(c.get("/gpus", headers={"Authorization": f"Bearer {forged}"}), 401)
        key_id, token = api.keys.create("eve")
        api.keys.revoke(key_id)
        assert_error(c.get("/gpus", headers={"Authorization": f"Bearer {token}"}), 401)


def test_keys_are_stored_hashed(api: Api):
    import sqlite3

    assert api.keys.path != api.database  # their own file, not the scheduler's accounting database
    conn = sqlite3.connect(api.keys.path)
    rows = conn.execute("SELECT key_id, salt, hash, user, role FROM api_keys").fetchall()
    conn.close()
    dump = json.dumps(rows)
    for token in api.tokens.values():
        assert token.split("_", 2)[2] not in dump  # the secret part is never stored
    assert {r[3]: r[4] for r in rows}["admin"] == "admin"


# -- predict -------------------------------------------------------------------------------------------


def test_predict_returns_text_from_the_model(api: Api):
    with api.client() as c:
        r = c.post("/predict", json={"text": "To be, or not", "max_length": 64, "temperature": 0.0, "wait": 30})
        assert r.status_code == 200, r.text
        body = r.json()
    assert body["status"] == "completed"
    assert body["gpu_id"] in (0, 1)
    result = body["result"]
    assert len(result["text"]) == 64
    assert {"execution_time", "timestamp", "seed", "device"} <= set(result)
    local = char_gru.predict("To be, or not", 64, 0.0, 0, model=char_gru.load_model("cpu"))
    assert result["text"] == local["text"]


def test_predict_honours_seed_and_temperature(api: Api):
    with api.client() as c:

        def run(**params: Any) -> str:
            r = c.post("/predict", json={"text": "Once upon a midnight", "max_length": 40, "wait": 30, **params})
            return r.json()["result"]["text"]

        assert run(seed=7, temperature=1.0) == run(seed=7, temperature=1.0)
        assert run(seed=7, temperature=1.0) != run(seed=8, temperature=1.0)


def test_predict_then_poll_task(api: Api):
    with api.client() as c:
        r = c.post("/predict", json={"text": "The Fox", "max_length": 30, "gpu_options": {"strategy": "round_robin"}})
        assert r.status_code == 200, r.text
        first = r.json()
        assert set(first) == {"task_id", "gpu_id", "status"}
        assert first["status"] in ("queued", "running", "completed")
        done = poll_task(c, first["task_id"])
        assert done["status"] == "completed" and len(done["result"]["text"]) == 30
        assert c.get(f"/tasks/{first['task_id']}").json()["result"] == done["result"]


def test_predict_and_batch_predict_state_each_tasks_size_as_its_cost(api: Api):
    """gpu_options.cost of a generation: characters of prompt + max_length, summed over a task's items."""
    with api.client() as c:
        one = c.post("/predict", json={"text": "abcd", "max_length": 30, "wait": 30}).json()
        batch = c.post(
            "/batch_predict",
            json={"batch": [{"text": "ab", "max_length": 10}, {"text": "xyz", "max_length": 20}], "wait": 30},
        ).json()
    with Client(api.cluster.scheduler_address, gpu_defaults={"user": "admin"}, timeout=30) as client:
        key = one.get("chunk_id") or one["task_id"]  # with dynamic batching: its batch task (of one request)
        assert client.explain(key)["cost"] == 34
        chunks = {chunk["task_id"]: chunk["items"] for chunk in batch["chunks"]}
        sizes = [2 + 10, 3 + 20]
        for chunk_id, items in chunks.items():
            expected = sum(sizes[items["start"] : items["start"] + items["count"]])
            assert client.explain(chunk_id)["cost"] == expected


def test_predict_with_affinity_finds_its_state_warm_where_it_was_loaded_within_the_load_bound(api: Api):
    """gpu_options.affinity end to end: the first request with a key loads the key's state on its GPU (cold),
    the next ones go to that GPU and find it warm while its load stays within the bound; once that GPU holds
    more than the bound allows (two long jobs on it), the key's request goes to the other GPU and misses there.
    The workers' own counters (``warm_stats``) agree with what the results say."""
    from altlas_dask.model.warm import warm_stats

    key = f"conversation-{os.urandom(4).hex()}"  # a key no other test of the module's cluster used
    api.tokens.setdefault("ines", api.keys.create("ines")[1])
    with Client(api.cluster.scheduler_address, timeout=30) as client:
        before = client.run(warm_stats)
    with api.client("ines") as c:

        def ask() -> tuple[int, bool]:
            body = {"text": "Hello", "max_length": 4, "seed": 3, "gpu_options": {"affinity": key}, "wait": 30}
            r = c.post("/predict", json=body)
            assert r.status_code == 200 and r.json()["status"] == "completed", r.text
            return r.json()["result"]["gpu"], r.json()["result"]["warm"]

        gpu, warm = ask()
        assert warm is False  # its first use: loaded there
        assert [ask() for _ in range(3)] == [(gpu, True)] * 3
        # 2 tasks on its GPU, none on the other: a GPU may hold ceil(1.25 x (2 + 1) / 2) = 2, so not it
        running = [start_long(c, gpu=gpu) for _ in range(2)]
        try:
            assert ask() == (1 - gpu, False)
        finally:
            for task_id in running:
                c.delete(f"/tasks/{task_id}")
        for task_id in running:
            poll_task(c, task_id)
        assert ask()[1] is True  # warm on both GPUs now, wherever it goes
    with Client(api.cluster.scheduler_address, timeout=30) as client:
        after = client.run(warm_stats)
    counted = {n: sum(after[w][n] - before[w][n] for w in after) for n in ("hits", "misses")}
    assert counted == {"hits": 4, "misses": 2}


def test_predict_bad_affinity_is_400_naming_the_field(api: Api):
    with api.client() as c:
        for bad in ("", "x" * 257, 7, ["a"]):
            assert_error(c.post("/predict", json={"text": "a", "gpu_options": {"affinity": bad}}), 400, "affinity")
        body = {"batch": [{"text": "a"}], "gpu_options": {"affinity": ""}}
        assert_error(c.post("/batch_predict", json=body), 400, "affinity")


def test_predict_bad_input_is_400_naming_the_field(api: Api):
    with api.client() as c:
        assert_error(c.post("/predict", json={"max_length": 5}), 400, "text")
        assert_error(c.post("/predict", json={"text": "a", "max_length": 99999}), 400, "max_length")
        assert_error(c.post("/predict", json={"text": "a", "max_length": "12"}), 400, "max_length")
        assert_error(c.post("/predict", json={"text": "a", "temperature": -1}), 400, "temperature")
        assert_error(c.post("/predict", json={"text": "a", "surprise": 1}), 400, "surprise")
        assert_error(c.post("/predict", json={"text": "a", "gpu_options": {"strategy": "x"}}), 400, "strategy")
        assert_error(c.post("/predict", json={"text": "a", "gpu_options": {"priority": 9}}), 400, "priority")
        assert_error(c.post("/predict", json={"text": "a", "gpu_options": {"specific_gpu_id": 7}}), 400, "unknown GPU")
        assert_error(c.post("/predict", json={"text": "a", "gpu_options": [1]}), 400, "gpu_options")
        assert_error(c.post("/predict", content=b'{"text": "a",', headers={"content-type": "application/json"}), 400)
        assert_error(c.post("/predict", json=[1, 2]), 400)
        for raw in (b'{"text": "a", "temperature": NaN}', b'{"text": "a", "temperature": Infinity}'):
            assert_error(c.post("/predict", content=raw, headers={"content-type": "application/json"}), 400)
        raw = b'{"model_id": "modelled", "payload": {"work_gflop": Infinity}}'
        assert_error(c.post("/route", content=raw, headers={"content-type": "application/json"}), 400, "work_gflop")
        r = c.post("/predict", json={"text": "a", "gpu_options": {"user": "bob"}})
        assert_error(r, 403, "acts as 'alice'")


def test_unknown_endpoint_method_and_huge_body(api: Api):
    with api.client() as c:
        assert_error(c.get("/nope"), 404, "no such endpoint")
        assert_error(c.put("/predict", json={}), 405)
        assert_error(c.post("/predict", content=b"x" * (5 * 1024 * 1024)), 413)


# -- batches ----------------------------------------------------------------------------------------------


def test_batch_results_in_input_order(api: Api):
    prompts = [f"{word} " for word in ("The", "And", "When", "A", "In", "It", "We", "Then", "So", "But")]
    batch = [{"text": p, "max_length": 12 + i, "temperature": 0.0} for i, p in enumerate(prompts)]
    with api.client() as c:
        r = c.post("/batch_predict", json={"batch": batch, "gpu_options": {"strategy": "round_robin"}})
        assert r.status_code == 200, r.text
        sub = r.json()
        assert sub["status"] in ("running", "queued", "mixed", "all_distributed", "all_queued")
        assert sum(t["items"]["count"] for t in sub["chunks"]) == len(batch)
        # split by speed (Client.submit_batch's split) over both GPUs, no chunk under min_batch_size_per_gpu (4)
        sizes = [t["items"]["count"] for t in sub["chunks"]]
        assert len(sizes) > 1 and min(sizes) >= 4, sizes
        assert [t["item"] for t in sub["tasks"]] == list(range(len(batch)))  # one task entry per input item

        def finished() -> dict[str, Any] | None:
            state = c.get(f"/batches/{sub['batch_id']}").json()
            return state if state["status"] == "completed" else None

        state = wait_for(finished, timeout=60, what="the batch")
        assert all(t["gpu_id"] in (0, 1) and t["status"] == "completed" for t in state["tasks"])
        texts = [res["text"] for res in state["results"]]
        assert [len(t) for t in texts] == [12 + i for i in range(len(batch))]
        model = char_gru.load_model("cpu")
        assert texts == [char_gru.predict(p["text"], p["max_length"], 0.0, 0, model=model)["text"] for p in batch]
        chunk = c.get(f"/task/{sub['chunks'][0]['task_id']}").json()
        assert chunk["batch_id"] == sub["batch_id"] and len(chunk["result"]["results"]) == sizes[0]
        item = c.get(f"/task/{sub['tasks'][5]['task_id']}").json()
        assert item["result"]["text"] == texts[5] and item["item"] == 5 and item["status"] == "completed"
        chunk_id = sub["chunks"][0]["task_id"]
        assert_error(c.get(f"/task/{chunk_id}.%C2%B2"), 404)  # "²".isdigit(), but int() refuses it: was a 500

        one = c.post("/predict/batch", json={"batch": batch[:6], "gpu_options": {"batch_split": False}}).json()
        assert len(one["chunks"]) == 1 and one["chunks"][0]["items"] == {"start": 0, "count": 6}
        assert len(one["tasks"]) == 6 and {t["chunk_id"] for t in one["tasks"]} == {one["chunks"][0]["task_id"]}
        listed = c.get("/batches").json()
        assert {sub["batch_id"], one["batch_id"]} <= {b["batch_id"] for b in listed["batches"]}
        with api.client("bob") as other:
            assert_error(other.get(f"/batches/{sub['batch_id']}"), 404)
        assert_error(c.post("/batch_predict", json={"batch": []}), 400, "batch")
        assert_error(c.post("/batch_predict", json={"batch": [{"text": 1}]}), 400, "batch.0.text")


def test_cancel_a_batch(api: Api):
    batch = [{"text": "x", "max_length": 1024, "temperature": 1.0} for _ in range(8)]
    with api.client() as c:
        sub = c.post("/batch_predict", json={"batch": batch, "gpu_options": {"batch_split": False}}).json()
        r = c.delete(f"/batches/{sub['batch_id']}")
        assert r.status_code == 200, r.text
        assert list(r.json()["tasks"].values()) == ["cancelled"]
        state = wait_for(
            lambda: (s := c.get(f"/batches/{sub['batch_id']}").json())["status"] == "cancelled" and s,
            timeout=30,
            what="the cancelled batch",
        )
        assert [r["status"] for r in state["results"]] == ["cancelled"] * 8
        assert all("cancelled by alice" in r["error"] for r in state["results"])
        assert_error(c.delete("/batches/batch-unknown"), 404)


def test_a_failed_chunk_keeps_the_other_results_in_place(api: Api):
    """Results stay aligned with the inputs whatever chunks fail; a failed chunk's items carry its error. (The split
    follows the GPUs' learned speeds, so the chunks holding the long items are found in the answer.)"""
    short = [{"text": f"{w} ", "max_length": 3 + i % 3, "temperature": 0.0} for i, w in enumerate("ABCDEFGHIJKL")]
    long = [{"text": "x", "max_length": 1024, "temperature": 1.0} for _ in range(4)]
    batch = short[:6] + long + short[6:]  # items 6-9 are long
    with api.client() as c:
        sub = c.post("/batch_predict", json={"batch": batch}).json()
        assert len(sub["chunks"]) > 1, sub
        doomed = [
            t for t in sub["chunks"] if t["items"]["start"] < 10 and t["items"]["start"] + t["items"]["count"] > 6
        ]
        assert doomed and len(doomed) < len(sub["chunks"]), sub  # some chunks fail, some do not
        for chunk in doomed:
            assert c.delete(f"/tasks/{chunk['task_id']}").status_code == 200
        state = wait_for(
            lambda: (s := c.get(f"/batches/{sub['batch_id']}").json())["status"] not in ("queued", "running") and s,
            timeout=60,
            what="the batch to finish",
        )
    model = char_gru.load_model("cpu")
    results = state["results"]
    cancelled = {i for t in doomed for i in range(t["items"]["start"], t["items"]["start"] + t["items"]["count"])}
    assert set(range(6, 10)) <= cancelled
    for i, item in enumerate(batch):
        if i in cancelled:
            assert results[i]["status"] == "cancelled" and results[i]["error"], results
        else:
            assert results[i]["text"] == char_gru.predict(item["text"], item["max_length"], 0.0, 0, model=model)["text"]


def test_the_router_pushes_task_records_and_a_get_makes_at_most_one_router_call(api: Api, monkeypatch):
    """The router pushes placements and state changes (its task feed, a Dask event topic): a submission learns its
    GPU without a look-up (before: an ``altlas_explain`` poll every 5 ms), and ``GET /task`` or ``GET /route`` asks
    the router at most once (before: up to two calls, three for ``GET /route``)."""
    from altlas_dask.client.router_client import RouterClient

    gateway = api.app.state.gateway
    calls: list[str] = []
    real = RouterClient.call

    async def counted(self: RouterClient, rpc: Any, **request: Any) -> Any:
        calls.append(rpc.value)
        return await real(self, rpc, **request)

    monkeypatch.setattr(RouterClient, "call", counted)  # every router call of the gateway goes through it
    with api.client() as c, api.client("bob") as bob:
        calls.clear()
        routed = c.post("/route", json={"model_id": "modelled", "payload": {"work_gflop": 5}, "request_id": "push-1"})
        assert routed.status_code == 200, routed.text
        assert calls.count("altlas_explain") == 1, calls  # only "is request_id free?": no placement look-up
        key = "push-1@alice"
        entry = wait_for(lambda: gateway.registry.tasks[key].router and gateway.registry.tasks[key], what="a push")
        assert entry.router["user"] == "alice" and entry.router["key"] == key, entry.router
        for path, owner in (
            ("/task/push-1", c),
            ("/route/push-1", c),
            ("/task/unknown-id", c),
            ("/task/push-1", bob),
        ):
            calls.clear()
            owner.get(path, params={"wait": 30} if owner is c else None)
            assert len(calls) <= 1, (path, calls)
        wait_for(lambda: entry.router.get("finished_at"), what="the pushed final record")
        calls.clear()
        assert c.get("/route/push-1").json()["duration"] is not None  # from the pushed record: start and end
        assert calls == [], calls
    assert gateway.registry.pushed > 0


def test_waiting_without_polling(api: Api):
    """``wait`` on every submission and long polls on tasks and batches: one request each, no client loop.
    (The client's timeout is shorter than ``wait``: an answer that waited the whole ``wait`` fails the test.)"""
    with api.client() as c, httpx.Client(base_url=c.base_url, headers=c.headers, timeout=20) as short:
        task_id = c.post("/predict", json={"text": "Long ", "max_length": 64}).json()["task_id"]
        done = short.get(f"/task/{task_id}", params={"wait": 60}).json()
        assert done["status"] == "completed" and len(done["result"]["text"]) == 64, done
        sub = c.post("/batch_predict", json={"batch": [{"text": "a", "max_length": 5}] * 5, "wait": 30}).json()
        assert sub["status"] == "completed" and [len(r["text"]) for r in sub["results"]] == [5] * 5, sub
        assert all(t["status"] == "completed" and len(t["result"]["text"]) == 5 for t in sub["tasks"]), sub
        later = c.post("/batch_predict", json={"batch": [{"text": "b", "max_length": 40}] * 6}).json()
        state = short.get(f"/batches/{later['batch_id']}", params={"wait": 60}).json()
        assert state["status"] == "completed" and len(state["results"]) == 6, state
        item = short.get(f"/task/{later['tasks'][-1]['task_id']}", params={"wait": 60}).json()
        assert item["status"] == "completed" and len(item["result"]["text"]) == 40, item
        routed = c.post("/route", json={"model_id": "modelled", "payload": {"work_gflop": 5}, "wait": 30}).json()
        assert routed["status"] == "completed" and routed["result"]["gpu"] in (0, 1), routed
        job = c.post("/route", json={"model_id": "generate", "payload": {"text": "x", "max_length": 30}}).json()
        record = short.get(f"/route/{job['request_id']}", params={"wait": 60}).json()
        assert record["status"] == "completed" and len(record["result"]["text"]) == 30, record
        assert_error(c.get(f"/task/{task_id}", params={"wait": 61}), 400, "wait")
        assert_error(c.post("/batch_predict", json={"batch": [{"text": "a"}], "wait": -1}), 400, "wait")


SEED_CLIENT = Path(__file__).parent / "data" / "seed_004_client.md"


def seed_client_code() -> str:
    """The Python client of seed 004 section 6.1, verbatim (the first python block after its heading)."""
    text = SEED_CLIENT.read_text(encoding="utf-8")
    section = text[text.index("### 6.1") :]
    start = section.index("```python") + len("```python")
    return section[start : section.index("```", start)]


def test_seed_004_client_passes_unchanged(api: Api):
    """Seed 004's own client (section 6.1) against this gateway: only its two settings (URL, key) are set."""
    code = seed_client_code()
    assert 'api_url = "https://api.example.com/api/v1"' in code and 'api_key = "your_api_key"' in code
    code = code.replace("https://api.example.com/api/v1", api.url + "/api/v1").replace(
        "your_api_key", api.tokens["bob"]
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Task ID: " in run.stdout and "GPU Status:" in run.stdout and "Status: " in run.stdout
    client: dict[str, Any] = {}
    exec(compile(code, "seed_004_client", "exec"), client)  # as a module: its functions, not its __main__
    batch = [
        {"text": "Sample input text 1", "max_length": 128, "temperature": 0.7},
        {"text": "Sample input text 2", "max_length": 256, "temperature": 0.5},
    ]
    answer = client["batch_predict"](batch, gpu_options={"strategy": "round_robin", "batch_split": True})
    assert answer["status"] in ("running", "queued", "mixed", "all_distributed", "all_queued"), answer
    assert len(answer["tasks"]) == 2, answer  # one task entry per input item, whatever the chunking
    for task, item in zip(answer["tasks"], batch, strict=True):
        assert set(task) >= {"task_id", "gpu_id", "status"}
        state = wait_for(
            lambda t=task: (s := client["get_task_status"](t["task_id"]))["status"] == "completed" and s,
            what="a batch item",
        )
        assert len(state["result"]["text"]) == item["max_length"] and state["result"]["execution_time"] >= 0
    with api.client("bob") as c:
        task_id = start_long(c)
        assert c.delete(f"/tasks/{task_id}").status_code == 200
        poll_task(c, task_id)
        both = [set(c.get("/tasks", params={"status": s}).json()["tasks"]) for s in ("canceled", "cancelled")]
        assert task_id in both[0] and both[0] == both[1]


# -- tasks -----------------------------------------------------------------------------------------------


def test_list_tasks_filters_and_pages(api: Api):
    with api.client("dave") as c:
        ids = [c.post("/predict", json={"text": "a", "max_length": 5}).json()["task_id"] for _ in range(3)]
        for task_id in ids:
            poll_task(c, task_id)
        listing = c.get("/tasks", params={"status": "completed", "limit": 2}).json()
        assert len(listing["tasks"]) == 2 and listing["total"] == 3
        assert all(t["status"] == "completed" and t["user"] == "dave" for t in listing["tasks"].values())
        assert all("result" in t for t in listing["tasks"].values())
        rest = c.get("/tasks", params={"status": "completed", "limit": 2, "offset": 2}).json()
        assert set(rest["tasks"]) | set(listing["tasks"]) == set(ids)
        assert c.get("/tasks", params={"status": "running"}).json()["tasks"] == {}
        assert_error(c.get("/tasks", params={"status": "bogus"}), 400, "status")
        assert_error(c.get("/tasks", params={"limit": 0}), 400, "limit")
        assert_error(c.get("/tasks", params={"offset": -1}), 400, "offset")
        assert_error(c.get("/tasks", params={"user": "alice"}), 403)
    with api.client("admin") as admin:
        assert set(ids) <= set(admin.get("/tasks", params={"user": "dave", "limit": 1000}).json()["tasks"])


def test_cancel_task_and_other_users_tasks_are_404(api: Api):
    with api.client() as c, api.client("bob") as bob:
        task_id = start_long(c)
        assert_error(bob.get(f"/task/{task_id}"), 404)
        assert_error(bob.delete(f"/tasks/{task_id}"), 404)
        r = c.delete(f"/tasks/{task_id}", params={})
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        assert poll_task(c, task_id)["status"] == "cancelled"
        assert_error(c.delete(f"/tasks/{task_id}"), 409)
        assert_error(c.get("/task/nope-123"), 404, "unknown task")
        assert_error(c.delete("/tasks/nope-123"), 404)


# -- routed jobs ------------------------------------------------------------------------------------------


def test_route_and_route_status(api: Api):
    with api.client() as c:
        body = {
            "request_id": "job-route-1",
            "model_id": "modelled",
            "priority": 4,
            "type": "inference",
            "resource_requirements": {"memory": 256, "expected_duration": 50},
            "timeout": 60_000,
            "payload": {"work_gflop": 20, "memory_mb": 256},
        }
        r = c.post("/route", json=body)
        assert r.status_code == 200, r.text
        routed = r.json()
        assert routed["request_id"] == "job-route-1"
        assert routed["status"] in ("accepted", "queued")
        if routed["status"] == "accepted":
            assert routed["assigned_gpu"] in ("gpu_0", "gpu_1") and routed["estimated_completion_time"]
        state = wait_for(
            lambda: (s := c.get("/route/job-route-1").json())["status"] == "completed" and s, what="the routed job"
        )
        assert state["model_id"] == "modelled" and state["user_id"] == "alice"
        assert state["duration"] is not None and state["progress"] == 1.0
        assert state["result"]["gpu"] in (0, 1)
        assert_error(c.post("/route", json=body), 409, "already has a request")
        assert_error(c.post("/route", json={"model_id": "nope"}), 400, "model_id")
        assert_error(c.post("/route", json={"model_id": "modelled", "payload": {"work_gflop": "x"}}), 400, "work_gflop")
        assert_error(c.post("/route", json={"model_id": "modelled", "payload": {"bogus": 1}}), 400, "bogus")
        assert_error(c.post("/route", json={"model_id": "modelled", "priority": 7}), 400, "priority")
        assert_error(c.post("/route", json={"model_id": "modelled", "callback_url": "http://x"}), 400, "callback")
        assert_error(c.post("/route", json={"model_id": "modelled", "user_id": "bob"}), 403)
        gen = c.post("/route", json={"model_id": "generate", "payload": {"text": "Hope is", "max_length": 9}}).json()
        assert len(poll_task(c, gen["request_id"])["result"]["text"]) == 9
        assert_error(c.get("/route/nope"), 404)
        assert {w["model_id"] for w in c.get("/workloads").json()["workloads"]} >= {"modelled", "generate"}
    with api.client("admin") as admin:
        r = admin.post("/route", json={"model_id": "modelled", "user_id": "bob", "payload": {"work_gflop": 1}})
        assert r.status_code == 200, r.text
        with api.client("bob") as bob:
            assert poll_task(bob, r.json()["request_id"])["user"] == "bob"


def test_a_queued_route_carries_the_routers_start_and_completion_estimates(api: Api):
    """GPU 1 full (max_concurrent_tasks_per_gpu long jobs): a job only GPU 1 may run waits, and its answer says
    when it should start and end (the queue ahead and the learned durations, later than now; see
    docs/rest-api.md), not null."""
    from datetime import datetime

    slots = build_config(repo_config_data()).routing().max_concurrent_tasks_per_gpu
    api.tokens.setdefault("frank", api.keys.create("frank")[1])  # a user of its own: other tests' quotas stay
    with api.client("frank") as c:
        running = [start_long(c, gpu=1) for _ in range(slots)]
        try:
            before = time.time()
            # 50 GFLOP: 25 ms at the learned speed, so its completion is after its start also in ms-rounded times
            body = {"model_id": "modelled", "payload": {"work_gflop": 50}, "gpu_options": {"specific_gpu_id": 1}}
            r = c.post("/route", json=body)
            assert r.status_code == 200, r.text
            answer = r.json()
            running.append(answer["request_id"])
            assert answer["status"] == "queued" and answer["queue_position"] == 1, answer
            start, end = (
                datetime.fromisoformat(answer[f"estimated_{when}_time"]).timestamp() for when in ("start", "completion")
            )
            assert before < start < end, answer
        finally:
            for task_id in running:
                c.delete(f"/tasks/{task_id}")


def test_cancelling_one_request_of_a_batch_task_leaves_its_neighbours(api: Api):
    """GPU 1 full of long jobs holds a three-item batch task in the router's queue; cancelling its second item
    answers ``cancelled`` at once, the batch task itself stays queued; once GPU 1 frees up the other two run and
    complete with their own texts, the cancelled one stays cancelled with who cancelled it and its result is
    never shown; on the worker its row was stopped (the batch task's own result says so for that row)."""
    slots = build_config(repo_config_data()).routing().max_concurrent_tasks_per_gpu
    api.tokens.setdefault("gina", api.keys.create("gina")[1])
    with api.client("gina") as c:
        running = [start_long(c, gpu=1) for _ in range(slots)]
        try:
            batch = [{"text": f"item {i} ", "max_length": 40, "seed": i} for i in range(3)]
            body = {"batch": batch, "gpu_options": {"specific_gpu_id": 1, "batch_split": False}}
            r = c.post("/batch_predict", json=body)
            assert r.status_code == 200, r.text
            ids = [t["task_id"] for t in r.json()["tasks"]]
            chunk = r.json()["chunks"][0]["task_id"]
            assert len(ids) == 3 and all(i.startswith(chunk + ".") for i in ids)
            r = c.delete(f"/tasks/{ids[1]}", params={})
            assert r.status_code == 200 and r.json() == {"task_id": ids[1], "status": "cancelled"}, r.text
            assert c.get(f"/task/{chunk}").json()["status"] == "queued"  # the neighbours still want it
        finally:
            for task_id in running:
                c.delete(f"/tasks/{task_id}")
        done = [poll_task(c, task_id) for task_id in ids]
        assert [d["status"] for d in done] == ["completed", "cancelled", "completed"], done
        assert "gina" in done[1]["error"] and "result" not in done[1]
        assert done[0]["result"]["text"] != done[2]["result"]["text"]
        assert_error(c.delete(f"/tasks/{ids[0]}"), 409, "already finished")
        assert c.get(f"/task/{ids[1]}", params={"wait": 30}).json()["status"] == "cancelled"  # final: no wait
        rows = c.get(f"/task/{chunk}").json()["result"]["results"]
        assert "stopped" in rows[1]["error"] and len(rows[0]["text"]) == len(rows[2]["text"]) == 40, rows


def test_concurrent_predicts_each_keep_their_own_task_result_and_quota_charge(api: Api):
    """Eight predicts at once (dynamic batching groups those of the same moment into batch tasks): every one
    answers its own text under its own task id, which GET /task resolves; the batch sizes they report add up
    over their batch tasks; the user's quota counts eight requests, however they were grouped."""
    from concurrent.futures import ThreadPoolExecutor

    api.tokens.setdefault("hana", api.keys.create("hana")[1])

    def one(i: int) -> dict[str, Any]:
        with api.client("hana") as c:
            r = c.post("/predict", json={"text": f"request {i} ", "max_length": 16, "seed": 100 + i, "wait": 30})
            assert r.status_code == 200, r.text
            return r.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    assert all(a["status"] == "completed" for a in answers), answers
    assert len({a["task_id"] for a in answers}) == 8
    assert [a["result"]["seed"] for a in answers] == [100 + i for i in range(8)]
    chunks: dict[str, set[int]] = {}
    with api.client("hana") as c:
        for a in answers:
            again = c.get(f"/task/{a['task_id']}").json()
            assert again["result"] == a["result"] and again["status"] == "completed"
            chunks.setdefault(again["chunk_id"], set()).add(again["batch_size"])
        assert all(len(sizes) == 1 for sizes in chunks.values())  # one batch, one size
        assert sum(next(iter(sizes)) for sizes in chunks.values()) == 8
        used = c.get("/user/hana/quota").json()["rate_limits"]["requests_per_minute"]["used"]
        assert used == 8
        grouping = c.get("/metrics").json()["gateway"]["dynamic_batching"]
        assert grouping["requests"] >= 8 and 1 <= grouping["batches"] <= grouping["requests"]


def test_route_callback_is_signed_retried_and_only_to_allowed_hosts(api: Api):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from altlas_dask.api import callbacks

    received: list[tuple[dict[str, str], bytes]] = []
    delivered = threading.Event()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # the first delivery fails (503): the gateway must retry
            received.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200 if len(received) >= 2 else 503)
            self.end_headers()
            if len(received) >= 2:
                delivered.set()

        def log_message(self, *args: Any) -> None:
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{hook.server_address[1]}/hook"
    try:
        with api.client() as c:
            body = {"model_id": "modelled", "payload": {"work_gflop": 5}, "callback_url": url}
            request_id = c.post("/route", json=body).json()["request_id"]
            assert delivered.wait(60), received
            headers, sent = received[-1]
            stamp, signature = headers["X-Altlas-Timestamp"], headers["X-Altlas-Signature"]
            assert callbacks.verify(api.tokens["alice"], stamp, sent, signature)
            assert not callbacks.verify(api.tokens["bob"], stamp, sent, signature)
            record = json.loads(sent)
            assert record["request_id"] == request_id and record["status"] == "completed" and "result" in record
            state = wait_for(
                lambda: (s := c.get(f"/route/{request_id}").json())["callback"]["status"] == "delivered" and s,
                what="the callback state",
            )
            assert state["callback"]["attempts"] == 2 and len(received) == 2
            refused = {**body, "callback_url": "http://203.0.113.9/hook"}
            assert_error(c.post("/route", json=refused), 400, "callback_url", "not allowed")
            assert_error(c.post("/route", json={**body, "callback_url": "file:///etc/passwd"}), 400, "callback_url")
    finally:
        hook.shutdown()
        hook.server_close()


# -- GPUs, metrics, quota -------------------------------------------------------------------------------------


def test_gpus_and_gpu_status(api: Api):
    with api.client() as c:
        gpus = c.get("/gpus").json()["gpus"]
        assert [g["id"] for g in gpus] == [0, 1]
        assert gpus[0]["memory_total"] == 81920 * 1024 * 1024
        assert {"id", "name", "utilization", "memory_used", "memory_total", "task_count"} <= set(gpus[0])
        one = c.get("/gpus/gpu_1").json()
        assert one["id"] == 1 and one["gpu_id"] == "gpu_1"
        assert c.get("/gpus/1").json()["id"] == 1
        assert_error(c.get("/gpus/9"), 404, "unknown GPU")
        assert_error(c.get("/gpus/abc"), 404)
        assert_error(c.get("/gpus/%C2%B2"), 404, "'²'", "0-9")  # "²".isdigit(), but int() refuses it: was a 500
        assert_error(c.get("/gpus/gpu_%D9%A1"), 404, "0-9")  # an Arabic-Indic one (int() takes it: GPU 1 before)
        status = c.get("/gpu/status").json()
        assert status["timestamp"] and status["gpus"][0]["memory"]["total"] == 81920


STABLE_GPU_FIELDS = ("id", "gpu_id", "uuid", "name", "compute_capability", "memory_total", "simulated", "worker")


def test_a_gpu_has_one_json_shape_in_the_cli_rest_and_python(api: Api):
    """CLI ``gpus --json``, REST /gpus, /gpus/{id}, /gpu/status and Python ``GpuState.to_api()``: the same
    keys, the same values for what does not move."""
    from altlas_dask.client.gpu_client import Client

    cli = subprocess.run(
        [*cli_command(), "gpus", "--scheduler", api.cluster.scheduler_address, "--json"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    with api.client() as c, Client(api.cluster.scheduler_address, set_as_default=False, timeout=30) as python:
        shapes = {
            "cli": json.loads(cli.stdout)["gpus"][1],
            "rest /gpus": c.get("/gpus").json()["gpus"][1],
            "rest /gpus/1": c.get("/gpus/1").json(),
            "rest /gpu/status": c.get("/gpu/status").json()["gpus"][1],
            "python": python.gpus()[1].to_api(),
        }
    for where, shape in shapes.items():
        assert set(shape) == set(shapes["cli"]), where
        assert {k: shape[k] for k in STABLE_GPU_FIELDS} == {k: shapes["cli"][k] for k in STABLE_GPU_FIELDS}, where


def test_metrics_summary(api: Api):
    with api.client("admin") as admin, api.client("bob") as bob:
        admin.post("/predict", json={"text": "m", "max_length": 3, "wait": 30})
        m = wait_for(  # the router's records reach SQLite within accounting.flush_interval
            lambda: "admin" in (r := admin.get("/metrics").json())["users"] and r,
            what="the admin's finished request in /metrics",
        )
        assert {"timestamp", "system", "gpus", "models", "users", "gateway"} <= set(m)
        assert m["system"]["total_gpus"] == 2 and m["system"]["completed_requests"] >= 1
        assert m["system"]["p99_response_time"] is not None
        assert {"gpu_0", "gpu_1"} == set(m["gpus"]) and "throughput" in m["gpus"]["gpu_0"]
        assert "text_generation" in m["models"]
        assert "admin" in m["users"] and m["gateway"]["requests"] > 0
        mine = bob.get("/metrics").json()
        assert set(mine["users"]) <= {"bob"}
        assert_error(bob.get("/metrics", params={"window": -5}), 400, "window")


def test_quota_read_and_429_with_retry_after(api: Api):
    with api.client("carol") as carol, api.client("admin") as admin, api.client("bob") as bob:
        q = carol.get("/user/carol/quota").json()
        assert q["user_id"] == "carol" and "requests_per_minute" in q["rate_limits"]
        assert_error(bob.get("/user/carol/quota"), 403)
        assert admin.get("/user/carol/quota").status_code == 200
        assert_error(carol.put("/admin/user/carol/quota", json={"requests_per_minute_limit": 1}), 403)
        assert_error(admin.put("/admin/user/carol/quota", json={"requests_per_minute_limit": 0}), 400)
        assert_error(admin.put("/admin/user/carol/quota", json={}), 400)
        assert_error(admin.put("/admin/user/carol/quota", json={"bogus": 1}), 400, "bogus")
        r = admin.put("/admin/user/carol/quota", json={"requests_per_minute_limit": 1, "gpu_time_limit": 30})
        assert r.status_code == 200, r.text
        assert r.json()["limits"]["requests_per_minute"] == 1
        assert carol.post("/predict", json={"text": "a", "max_length": 3}).status_code == 200
        r = carol.post("/predict", json={"text": "a", "max_length": 3})
        body = assert_error(r, 429, "requests_per_minute")
        assert int(r.headers["retry-after"]) >= 1 and body["retry_after"] >= 1
        r = carol.post("/route", json={"model_id": "modelled", "payload": {"work_gflop": 1}})
        assert_error(r, 429)
        assert carol.get("/user/carol/quota").json()["rate_limits"]["requests_per_minute"]["used"] == 1


def test_numbers_out_of_range_are_400_naming_the_field(api: Api):
    from altlas_dask.client.gpu_client import Client
    from altlas_dask.errors import RouterValueError
    from altlas_dask.protocol import Rpc

    with api.client("admin") as admin:
        r = admin.put("/admin/user/carol/quota", json={"requests_per_day_limit": 10**30})
        assert_error(r, 400, "requests_per_day_limit")
        assert_error(admin.put("/admin/user/carol/quota", json={"gpu_time_limit": 1e30}), 400, "gpu_time_limit")
        assert_error(admin.get("/batches", params={"offset": 10**30}), 400, "offset")
    with Client(api.cluster.scheduler_address, gpu_defaults={"user": "admin"}, set_as_default=False) as client:
        with pytest.raises(ValueError, match="requests_per_day must be in 0..1,000,000,000"):
            client.set_quota("carol", requests_per_day=10**30)
        with pytest.raises(ValueError, match="gpu_time_minutes must be a number"):
            client.set_quota("carol", gpu_time_minutes="lots")
        checked = [  # the Python API checks before msgpack: (field, value, call)
            ("gpu", 10**30, lambda: client.drain_gpu(10**30)),
            ("gpu", -1, lambda: client.enable_gpu(-1)),
            ("limit", 10**30, lambda: client.tasks(limit=10**30)),
            ("offset", -1, lambda: client.tasks(offset=-1)),
            ("limit", -1, lambda: client.records(limit=-1)),
            ("since", 1e30, lambda: client.records(since=1e30)),
            ("specific_gpu_id", 10**30, lambda: client.submit(abs, -1, gpu_options={"specific_gpu_id": 10**30})),
        ]
        for field, value, call in checked:
            with pytest.raises(ValueError) as caught:
                call()
            assert field in str(caught.value) and f"(got {value!r})" in str(caught.value), caught.value
        raw = {  # and the router for callers that bypass it: a 400 naming the field, nothing reaches SQLite
            "limit": (Rpc.RECORDS, {"limit": 2**63}),
            "since": (Rpc.RECORDS, {"since": float("inf")}),
            "offset": (Rpc.TASKS, {"offset": 2**63}),
            "gpu": (Rpc.DRAIN, {"gpu": 2**63}),
            "requests_per_day": (Rpc.SET_QUOTA, {"user": "carol", "limits": {"requests_per_day": 2**63}}),
        }
        for name, (rpc, kwargs) in raw.items():
            with pytest.raises(RouterValueError) as refused:
                client.sync(client.router.call, rpc, **kwargs)
            assert refused.value.code == 400 and name in str(refused.value), refused.value


def test_route_never_reveals_another_users_request_id(api: Api):
    body = {"request_id": "shared-name-1", "model_id": "modelled", "payload": {"work_gflop": 1}}
    with api.client("bob") as bob, api.client("dave") as dave:
        first = bob.post("/route", json=body)
        assert first.status_code == 200, first.text
        second = dave.post("/route", json=body)  # the same id as bob's: dave's own request, nothing revealed
        assert second.status_code == 200 and second.json()["request_id"] == "shared-name-1", second.text
        assert poll_task(dave, "shared-name-1")["user"] == "dave"
        assert poll_task(bob, "shared-name-1")["user"] == "bob"
        assert dave.get("/route/shared-name-1").json()["user_id"] == "dave"
        assert_error(dave.post("/route", json=body), 409, "already has a request")


# -- admin -------------------------------------------------------------------------------------------------------


def test_maintenance_and_503_without_gpus(api: Api):
    with api.client("admin") as admin, api.client() as c:
        assert_error(c.post("/admin/gpu/0/maintenance", json={"reason": "x"}), 403)
        assert_error(admin.post("/admin/gpu/7/maintenance", json={}), 404)
        try:
            r = admin.post("/admin/gpu/0/maintenance", json={"reason": "fan swap", "estimated_duration": 30})
            assert r.status_code == 200 and r.json()["status"] == "maintenance", r.text
            assert c.get("/gpus/0").json()["status"] == "maintenance"
            done = c.post("/predict", json={"text": "a", "max_length": 3, "wait": 30}).json()
            assert done["gpu_id"] == 1
            admin.post("/admin/gpu/1/maintenance", json={})
            r = c.post("/predict", json={"text": "a", "max_length": 3})
            assert_error(r, 503, "no GPU available")
        finally:
            for gpu in (0, 1):
                assert admin.delete(f"/admin/gpu/{gpu}/maintenance").status_code == 200
        assert c.post("/predict", json={"text": "a", "max_length": 3}).status_code == 200


def test_admin_cancels_any_request(api: Api):
    with api.client("admin") as admin, api.client("bob") as bob:
        task_id = start_long(bob)
        assert_error(bob.delete(f"/admin/request/{task_id}"), 403)
        r = admin.request("DELETE", f"/admin/request/{task_id}", json={"reason": "runaway job"})
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        assert poll_task(bob, task_id)["status"] == "cancelled"
        assert_error(admin.delete("/admin/request/nope-1"), 404)


def test_admin_restarts_a_gpu_worker(api: Api):
    with api.client("admin") as admin, api.client() as c:
        task_id = start_long(c, gpu=1)
        try:
            assert_error(admin.post("/admin/gpu/1/restart", json={"force": False}), 409, "running")
        finally:
            c.delete(f"/tasks/{task_id}")
        wait_for(lambda: c.get("/gpus/1").json()["task_count"] == 0, what="GPU 1 idle")
        before = c.get("/gpus/1").json()["worker"]
        r = admin.post("/admin/gpu/1/restart", json={"force": True})
        assert r.status_code == 200, r.text
        assert r.json()["old_worker"] == before and r.json()["worker"] != before
        done = c.post(
            "/predict", json={"text": "a", "max_length": 4, "wait": 60, "gpu_options": {"specific_gpu_id": 1}}
        )
        assert done.json()["status"] == "completed" and done.json()["gpu_id"] == 1


# -- malformed input never breaks the server ---------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
)
bad_numbers = st.sampled_from([-1, -(2**63), 2**80, 10**6, 1e308, -1e-9, "7", [], {}, True, None])
bad_strategies = st.text(min_size=1, max_size=12).filter(
    lambda s: (
        s not in ("single_gpu", "round_robin", "least_loaded", "memory_optimized", "task_specific", "random")
        and s != "hybrid"
    )
)


@st.composite
def invalid_predict(draw) -> Any:
    body: dict[str, Any] = {"text": "hi", "max_length": 5}
    kind = draw(st.sampled_from(["max_length", "temperature", "seed", "text", "strategy", "priority", "gpu", "extra"]))
    if kind == "max_length":
        body["max_length"] = draw(bad_numbers.filter(lambda v: v is not None) | st.integers(1025, 2**70))
    elif kind == "temperature":
        body["temperature"] = draw(st.floats(2.0001, 1e308) | st.floats(-1e308, -1e-9) | st.text(max_size=5))
    elif kind == "seed":
        body["seed"] = draw(st.integers(max_value=-1) | st.integers(min_value=2**63) | st.text(max_size=3))
    elif kind == "text":
        body["text"] = draw(st.integers() | st.lists(st.text(), max_size=2) | st.none())
    elif kind == "strategy":
        body["gpu_options"] = {"strategy": draw(bad_strategies)}
    elif kind == "priority":
        body["gpu_options"] = {"priority": draw(st.integers(6, 2**70) | st.integers(-(2**70), 0))}
    elif kind == "gpu":
        body["gpu_options"] = {"specific_gpu_id": draw(st.integers(2, 2**70) | st.integers(max_value=-1))}
    else:
        body[draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in body))] = draw(json_scalars)
    return body


@st.composite
def invalid_route(draw) -> Any:
    body: dict[str, Any] = {"model_id": "modelled", "payload": {"work_gflop": 1}}
    kind = draw(st.sampled_from(["model", "payload", "priority", "memory", "timeout", "strategy"]))
    if kind == "model":
        body["model_id"] = draw(
            st.text(max_size=10).filter(lambda m: m not in ("modelled", "torch_matmul", "generate"))
        )
    elif kind == "payload":
        body["payload"] = {"work_gflop": draw(st.floats(max_value=-1e-6, allow_infinity=False) | st.text())}
    elif kind == "priority":
        body["priority"] = draw(st.integers(6, 2**70) | st.integers(-(2**70), 0) | st.text(max_size=3))
    elif kind == "memory":
        body["resource_requirements"] = {"memory": draw(st.integers(max_value=-1) | st.integers(min_value=2**45))}
    elif kind == "timeout":
        body["timeout"] = draw(st.integers(max_value=0) | st.floats(allow_nan=False, allow_infinity=False))
    else:
        body["gpu_options"] = {"strategy": draw(bad_strategies)}
    return body


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=invalid_predict())
def test_fuzz_invalid_predict_is_400(api: Api, body: Any):
    with api.client() as c:
        assert_error(c.post("/predict", json=body), 400)


@FUZZ
@given(body=invalid_route())
def test_fuzz_invalid_route_is_400(api: Api, body: Any):
    with api.client() as c:
        assert_error(c.post("/route", json=body), 400)


@FUZZ
@given(
    path=st.sampled_from(
        ["/predict", "/batch_predict", "/predict/batch", "/route", "/admin/user/bob/quota", "/admin/gpu/0/restart"]
    ),
    body=json_values | st.binary(max_size=40),
)
def test_fuzz_any_body_is_never_a_server_error(api: Api, path: str, body: Any):
    with api.client("bob") as c:
        if isinstance(body, bytes):
            r = c.post(path, content=body, headers={"content-type": "application/json"})
        elif path.startswith("/admin/user"):
            r = c.put(path, json=body)
        else:
            r = c.post(path, json=body)
        assert r.status_code < 500, r.text
        assert "Traceback" not in r.text
        assert r.headers["content-type"].startswith("application/json")
        if r.status_code >= 400:
            assert isinstance(r.json()["error"], str)


def test_server_still_serves_after_the_fuzzing(api: Api):
    with api.client() as c:
        assert c.get("/health").status_code == 200
        assert c.post("/predict", json={"text": "still here", "max_length": 5, "wait": 30}).json()["status"] == (
            "completed"
        )


# -- the CLI --------------------------------------------------------------------------------------------------------


def test_cli_keys_and_api_serve(api: Api, tmp_path):
    base = [*cli_command(), "--set", f"accounting.database={api.database}"]
    created = subprocess.run(
        [*base, "keys", "create", "--user", "cli-user"], capture_output=True, text=True, env=cli_env()
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("ak_") and "shown only once" in created.stderr
    listed = subprocess.run([*base, "keys", "list", "--json"], capture_output=True, text=True, env=cli_env())
    assert "cli-user" in listed.stdout and token not in listed.stdout
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    tls: list[str] = []
    if shutil.which("openssl"):  # serve HTTPS with a throw-away self-signed certificate
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
            + ["-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
        )
        tls = ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    scheme = "https" if tls else "http"
    proc = subprocess.Popen(
        [*base, "api", "--scheduler", api.cluster.scheduler_address, "--port", str(port), "--no-warm-up", *tls],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(),
    )
    try:
        url = f"{scheme}://127.0.0.1:{port}/api/v1"

        def up() -> bool:
            try:
                return httpx.get(url + "/health", timeout=2, verify=False).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None

        wait_for(up, timeout=60, what="altlas-dask api")
        assert proc.poll() is None
        r = httpx.get(url + "/gpus", headers={"Authorization": f"Bearer {token}"}, timeout=30, verify=False)
        assert r.status_code == 200 and len(r.json()["gpus"]) == 2
        if tls:  # plain HTTP on the TLS port does not get an answer
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    key_id = json.loads(listed.stdout)[-1]["key_id"]
    revoked = subprocess.run([*base, "keys", "revoke", key_id], capture_output=True, text=True, env=cli_env())
    assert revoked.returncode == 0, revoked.stderr
    assert api.keys.verify(token) is None
    away = subprocess.run(
        [*base, "api", "--scheduler", "tcp://127.0.0.1:9", "--port", str(port), "--connect-timeout", "1"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
    )
    assert away.returncode == 2 and "cannot reach the scheduler" in away.stderr and "Traceback" not in away.stderr
    bad = subprocess.run(
        [*cli_command(), "--set", "accounting.database=:memory:", "keys", "create", "--user", "x"],
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert bad.returncode != 0 and "database file" in bad.stderr


def test_gateway_keeps_at_most_max_tasks_finished_entries():
    from altlas_dask.api.registry import TaskEntry, TaskRegistry

    class FakeFuture:
        def __init__(self, done: bool) -> None:
            self._done = done

        def done(self) -> bool:
            return self._done

    registry = TaskRegistry(ApiSettings(max_tasks=5))
    for i in range(50):
        registry.remember(TaskEntry(str(i), "u", "predict", "generate", FakeFuture(i != 3), 0.0))
    assert len(registry.tasks) == 5
    assert "3" in registry.tasks  # a running task is never dropped
    assert "49" in registry.tasks and "40" not in registry.tasks


# -- schemathesis: the whole OpenAPI schema, with a user's key and an admin's (issue 22 item 7) -------------------

SCHEMATHESIS_EXAMPLES = int(os.environ.get("ALTLAS_SCHEMATHESIS_EXAMPLES", "80"))  # per key (docs/rest-api.md)
#: They take the module's shared GPUs away (a restart, a drain); their own tests above cover them.
CHANGES_THE_CLUSTER = {("POST", f"/api/v1/admin/gpu/{{gpu_id}}/{action}") for action in ("restart", "maintenance")}


def brief(body: Any) -> Any:
    """A generated body made quick to serve (no waiting, short generations) and otherwise as generated."""
    if isinstance(body, dict):
        body = {k: brief(v) for k, v in body.items()}
        if isinstance(body.get("wait"), int | float):
            body["wait"] = 0
        if isinstance(body.get("max_length"), int) and body["max_length"] > 8:
            body["max_length"] = 8
        if isinstance(body.get("work_gflop"), int | float) and body["work_gflop"] > 100:
            body["work_gflop"] = 100
    elif isinstance(body, list):
        body = [brief(v) for v in body]
    return body


@pytest.mark.parametrize("who", ["alice", "admin"])
def test_schemathesis_finds_no_server_error(api: Api, who: str):
    """Every operation of the gateway's OpenAPI schema, with cases generated from it: never a 5xx answer.
    (Last in this module: it leaves quotas and cancellations behind.)"""
    import schemathesis

    schema = schemathesis.openapi.from_url(api.url + "/api/v1/openapi.json")
    operations = [
        op
        for result in schema.get_all_operations()
        if (op := result.ok()) is not None and (op.method.upper(), op.path) not in CHANGES_THE_CLUSTER
    ]
    assert len(operations) > 20
    statuses: Counter[int] = Counter()
    server_errors: list[str] = []
    headers = {"Authorization": f"Bearer {api.tokens[who]}"}

    @settings(
        max_examples=SCHEMATHESIS_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def call(data: st.DataObject) -> None:
        case = data.draw(data.draw(st.sampled_from(operations)).as_strategy())
        case.body = brief(case.body)
        response = case.call(base_url=api.url, headers=headers, timeout=60)
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            what = f"{case.method} {case.formatted_path} {case.body!r}"
            server_errors.append(f"{what}: {response.status_code} {response.text}"[:2000])

    call()
    print(f"schemathesis, {who}'s key: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert not server_errors, "\n".join(server_errors[:20])
