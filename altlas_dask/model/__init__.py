"""The text-generation model: a character-level GRU (``char_gru``) trained by ``train`` on ``data/corpus.txt``.

This module stays light (no torch import): the workload functions below import the model on first
call, inside the GPU worker that runs them, so the CLI and the REST gateway never load torch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

MAX_LENGTH = 1024  # characters generated per request
MAX_PROMPT_CHARS = 4096
MAX_TEMPERATURE = 2.0
MAX_SEED = 2**63 - 1
MODEL_MEMORY_MB = 64  # GPU memory one generation reserves (weights + activations, generously)
DEFAULTS: dict[str, Any] = {"text": "", "max_length": 128, "temperature": 0.7, "seed": None}


def generation_size(params: Mapping[str, Any]) -> int:
    """A generation's ``gpu_options.cost``: characters of prompt plus characters to generate (the GRU runs
    one step per character of each)."""
    return len(params.get("text", "")) + int(params.get("max_length", DEFAULTS["max_length"]))


def generate(text: str, max_length: int = 128, temperature: float = 0.7, seed: int | None = None) -> dict[str, Any]:
    """The ``generate`` workload: continue ``text`` on this worker's GPU (see :func:`char_gru.generate`)."""
    from altlas_dask.model import char_gru

    return char_gru.generate(text, max_length, temperature, seed)


def generate_batch(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One batch chunk on this worker's GPU; results in input order (see :func:`char_gru.generate_batch`)."""
    from altlas_dask.model import char_gru

    return char_gru.generate_batch(items)


async def warm_up(dask_worker: Any = None) -> str:
    """Load the model on this worker's device now (``client.run(warm_up)`` passes ``dask_worker``).

    A coroutine, so that ``Client.run`` awaits it on the worker's event loop while the load (importing torch,
    reading the weights: seconds of CPU) runs in a thread: a plain function would run on the event loop itself
    and stop the worker's heartbeats until it returned (the router then saw every GPU unresponsive)."""
    from altlas_dask.model import char_gru

    return await asyncio.to_thread(char_gru.warm_up, dask_worker)
