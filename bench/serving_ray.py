"""Ray Serve serving the shipped GRU, for bench/serving.py (run with the Ray environment's Python).

``python bench/serving_ray.py plain|batch PORT [MAX_BATCH_SIZE]``: ``plain`` runs ``char_gru.predict`` per
request; ``batch`` uses ``@serve.batch`` and the batch's one-pass ``char_gru.predict_many`` (the same
forward the gateway's dynamic batching uses). Prints ``READY`` once Serve answers on 127.0.0.1:PORT.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import ray
import torch
from ray import serve
from starlette.requests import Request

from altlas_dask.model import char_gru


def _model() -> Any:
    torch.set_num_threads(1)  # as the gateway's simulated workers
    return char_gru.load_model("cpu")


@serve.deployment(max_ongoing_requests=256)
class Plain:
    def __init__(self) -> None:
        self.model = _model()

    async def __call__(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        out = char_gru.predict(body["text"], body["max_length"], body["temperature"], None, model=self.model)
        return {"status": "completed", "result": out}


@serve.deployment(max_ongoing_requests=256)
class Batched:
    def __init__(self, max_batch_size: int, wait_s: float) -> None:
        self.model = _model()
        self.handle_batch.set_max_batch_size(max_batch_size)
        self.handle_batch.set_batch_wait_timeout_s(wait_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def handle_batch(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"status": "completed", "result": r} for r in char_gru.predict_many(bodies, model=self.model)]

    async def __call__(self, request: Request) -> dict[str, Any]:
        return await self.handle_batch(await request.json())


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    max_batch_size = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    wait_s = float(sys.argv[4]) if len(sys.argv) > 4 else 0.002
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = Plain.bind() if mode == "plain" else Batched.bind(max_batch_size, wait_s)
    serve.run(app, route_prefix="/")
    print("READY", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
