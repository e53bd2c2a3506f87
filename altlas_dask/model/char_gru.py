"""A small character-level GRU text generator and the ``generate`` workload that runs it on a GPU worker.

The weights (``weights.pt`` beside this file, a few MB) are trained by ``python -m altlas_dask.model.train``
on ``data/corpus.txt``; both ship with the package, so nothing is downloaded at run time.

Each worker process loads the model once per torch device (a lazily filled cache keyed on the device):
CUDA on a real GPU worker, CPU on a simulated one. :func:`predict` generates text from a prompt,
honouring ``max_length`` (characters generated), ``temperature`` (0 = greedy) and ``seed``.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from altlas_dask.model import MAX_LENGTH, MAX_PROMPT_CHARS, MAX_SEED, MAX_TEMPERATURE, MODEL_MEMORY_MB

MODEL_DIR = Path(__file__).resolve().parent
WEIGHTS_PATH = MODEL_DIR / "weights.pt"
CORPUS_PATH = MODEL_DIR / "data" / "corpus.txt"

#: Newline plus printable ASCII: a fixed vocabulary, so any prompt encodes (other characters become a space).
VOCAB = "\n" + "".join(chr(i) for i in range(32, 127))
CHAR_TO_INDEX = {c: i for i, c in enumerate(VOCAB)}
UNKNOWN_INDEX = CHAR_TO_INDEX[" "]

PROMPT_CONTEXT = 512  # the model reads at most this many trailing prompt characters
CANCEL_CHECK_EVERY = 16  # generated characters between checks for a cancelled task


class CharGRU(nn.Module):
    """Embedding -> multi-layer GRU -> linear head over :data:`VOCAB`."""

    def __init__(self, vocab_size: int = len(VOCAB), embed: int = 64, hidden: int = 256, layers: int = 1) -> None:
        super().__init__()
        self.config = {"vocab_size": vocab_size, "embed": embed, "hidden": hidden, "layers": layers}
        self.embed = nn.Embedding(vocab_size, embed)
        self.gru = nn.GRU(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out, h = self.gru(self.embed(x), h)
        return self.head(out), h


def encode(text: str) -> list[int]:
    return [CHAR_TO_INDEX.get(c, UNKNOWN_INDEX) for c in text]


def decode(indices: Sequence[int]) -> str:
    return "".join(VOCAB[i] for i in indices)


def save_model(model: CharGRU, path: str | Path, meta: dict[str, Any]) -> None:
    """Weights as float16 (half the file size; generation upcasts to float32) plus config and metadata."""
    state = {k: v.detach().to(torch.float16).cpu() for k, v in model.state_dict().items()}
    torch.save({"config": model.config, "vocab": VOCAB, "meta": meta, "state_dict": state}, str(path))


def load_model(torch_device: str = "cpu", path: str | Path = WEIGHTS_PATH) -> CharGRU:
    """Read the shipped weights onto ``torch_device`` (``weights_only``: no pickled code is executed)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model weights {path} missing: train them with `python -m altlas_dask.model.train`")
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    if checkpoint.get("vocab") != VOCAB:
        raise ValueError(f"{path} was trained with another vocabulary; retrain with altlas_dask.model.train")
    model = CharGRU(**checkpoint["config"])
    model.load_state_dict({k: v.float() for k, v in checkpoint["state_dict"].items()})
    model.meta = checkpoint.get("meta", {})
    return model.to(torch_device).eval()


_MODELS: dict[str, CharGRU] = {}
_MODELS_LOCK = threading.Lock()


def get_model(torch_device: str = "cpu") -> CharGRU:
    """This process's copy of the model on ``torch_device``, loaded on first use."""
    model = _MODELS.get(torch_device)
    if model is None:
        with _MODELS_LOCK:
            model = _MODELS.get(torch_device)
            if model is None:
                if torch_device == "cpu":
                    # A simulated GPU worker runs several tasks on threads; one intra-op thread each keeps
                    # 4 worker processes from oversubscribing the machine's cores. A tiny GRU gains nothing more.
                    torch.set_num_threads(1)
                model = _MODELS[torch_device] = load_model(torch_device)
    return model


def check_params(text: str, max_length: int, temperature: float, seed: int | None) -> None:
    """Raise ``ValueError`` naming the bad parameter (the REST API validates the same bounds first)."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"text must be at most {MAX_PROMPT_CHARS} characters (got {len(text)})")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not 1 <= max_length <= MAX_LENGTH:
        raise ValueError(f"max_length must be an integer in 1..{MAX_LENGTH} (got {max_length!r})")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise ValueError(f"temperature must be a number (got {temperature!r})")
    if not 0.0 <= float(temperature) <= MAX_TEMPERATURE:
        raise ValueError(f"temperature must be in 0..{MAX_TEMPERATURE} (got {temperature!r})")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise ValueError(f"seed must be an integer in 0..2**63-1 or null (got {seed!r})")


def gumbel_noise(seed: int, steps: int) -> torch.Tensor:
    """``steps`` rows of Gumbel noise over :data:`VOCAB`, drawn from ``seed`` alone.

    Sampling is ``argmax(logits / temperature + noise)`` (the Gumbel-max trick: the same distribution as drawing
    from ``softmax(logits / temperature)``), so a request's text depends only on its own seed, alone or in any
    batch, and a batch samples all its rows in one vectorised step."""
    uniform = torch.rand(steps, len(VOCAB), generator=torch.Generator().manual_seed(seed))
    return -torch.log(-torch.log(uniform))


@torch.inference_mode()
def predict(
    text: str,
    max_length: int = 128,
    temperature: float = 0.7,
    seed: int | None = None,
    *,
    model: CharGRU | None = None,
    torch_device: str = "cpu",
    stop: threading.Event | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Continue ``text`` by ``max_length`` characters.

    ``temperature`` scales the logits before sampling (0 picks the most likely character every step);
    the same ``seed`` and parameters give the same text on the same device. ``seed=None`` draws one and
    reports it, so any result can be reproduced. Generation runs in chunks of :data:`CANCEL_CHECK_EVERY`
    characters: after each the device is synchronised and ``stop`` checked (see
    :class:`~altlas_dask.gpus.chunks.ChunkGuard`, which also calls ``on_chunk(n)``).
    """
    from altlas_dask.gpus.chunks import ChunkGuard

    check_params(text, max_length, temperature, seed)
    model = model or get_model(torch_device)
    device = next(model.parameters()).device
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    start = time.perf_counter()
    noise = gumbel_noise(seed, max_length) if temperature else None
    prompt = encode(text[-PROMPT_CONTEXT:]) or [CHAR_TO_INDEX["\n"]]
    out: list[int] = []
    with ChunkGuard(stop, str(device), "text generation", on_chunk) as guard:
        logits, h = model(torch.tensor([prompt], device=device))
        last = logits[0, -1]
        for step in range(max_length):
            if step and step % CANCEL_CHECK_EVERY == 0:
                guard.chunk_done()
            if noise is None:
                index = int(last.argmax())
            else:
                index = int((last.float().cpu() / float(temperature) + noise[step]).argmax())
            out.append(index)
            logits, h = model(torch.tensor([[index]], device=device), h)
            last = logits[0, -1]
    return {
        "text": decode(out),
        "max_length": max_length,
        "temperature": float(temperature),
        "seed": seed,
        "device": str(device),
        "execution_time": round(time.perf_counter() - start, 6),
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


@torch.inference_mode()
def predict_many(
    items: Sequence[dict[str, Any]],
    *,
    model: CharGRU | None = None,
    torch_device: str = "cpu",
    stops: Sequence[threading.Event | None] | None = None,
) -> list[dict[str, Any] | BaseException]:
    """:func:`predict` for several prompts at once: one forward pass of the whole batch per generated step.

    Each item keeps its own parameters, seed (a row's text equals :func:`predict`'s up to float rounding in
    batched matrix products), stop flag and error: an invalid or cancelled item gets an exception in its
    place, the others their results. Every :data:`CANCEL_CHECK_EVERY` steps the device is synchronised and
    the stop flags checked.
    """
    from altlas_dask.gpus.chunks import KernelCancelledError, synchronize

    model = model or get_model(torch_device)
    device = next(model.parameters()).device
    stops = list(stops) if stops is not None else [None] * len(items)
    out: list[dict[str, Any] | BaseException] = [None] * len(items)  # type: ignore[list-item]
    rows, params = [], []
    for i, item in enumerate(items):
        p = (item.get("text", ""), item.get("max_length", 128), item.get("temperature", 0.7), item.get("seed"))
        try:
            check_params(*p)
        except ValueError as exc:
            out[i] = exc
            continue
        seed = random.SystemRandom().randrange(2**31) if p[3] is None else p[3]
        rows.append(i)
        params.append((p[0], p[1], float(p[2]), seed))
    if not rows:
        return out
    start = time.perf_counter()
    steps = max(length for _, length, _, _ in params)
    noise = torch.zeros(len(rows), steps, len(VOCAB))  # greedy rows (temperature 0): none, and a divisor of 1
    for r, (_, length, temperature, seed) in enumerate(params):
        if temperature:
            noise[r, :length] = gumbel_noise(seed, length)
    temperatures = torch.tensor([t or 1.0 for _, _, t, _ in params]).unsqueeze(1)
    prompts = [
        torch.tensor(encode(text[-PROMPT_CONTEXT:]) or [CHAR_TO_INDEX["\n"]], device=device) for text, *_ in params
    ]
    packed = nn.utils.rnn.pack_sequence([model.embed(p) for p in prompts], enforce_sorted=False)
    _, h = model.gru(packed)  # each row's state after its own last prompt character
    last = model.head(h[-1])
    live = [True] * len(rows)
    chosen_per_step: list[torch.Tensor] = []
    for step in range(steps):
        if step and step % CANCEL_CHECK_EVERY == 0:
            synchronize(str(device))
            for r, i in enumerate(rows):
                if live[r] and stops[i] is not None and stops[i].is_set():
                    live[r] = False
                    out[i] = KernelCancelledError(f"text generation stopped after {step} steps: its task was cancelled")
            if not any(live):
                return out
        chosen = (last.float().cpu() / temperatures + noise[:, step]).argmax(dim=-1)
        chosen_per_step.append(chosen)
        logits, h = model(chosen.to(device).unsqueeze(1), h)
        last = logits[:, -1]
    texts = torch.stack(chosen_per_step, dim=1).tolist()
    elapsed = round(time.perf_counter() - start, 6)
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    for r, i in enumerate(rows):
        if live[r]:
            _, length, temperature, seed = params[r]
            out[i] = {
                "text": decode(texts[r][:length]),
                "max_length": length,
                "temperature": temperature,
                "seed": seed,
                "device": str(device),
                "execution_time": elapsed,
                "timestamp": now,
                "batch_size": len(rows),
            }
    return out


# -- the workload: runs inside a GPU worker -------------------------------------------------------------


@contextmanager
def _on_gpu(busy: bool = True) -> Iterator[tuple[Any, threading.Event, bool | None]]:
    """The worker's GPU, its memory reserved and (``busy``) its time metered; a stop flag set if the task is
    cancelled; whether the task's affinity state was warm there (loaded first if not, None: no key). A batched
    request meters the device only around its batch's work (see :func:`generate`)."""
    from distributed import get_worker

    from altlas_dask.worker.binding import current_device

    device = current_device()
    key = get_worker().get_current_task()
    with device.reserve(MODEL_MEMORY_MB), device.cancellation.watch(key) as stop:
        warm = _hold_affinity(device, stop)  # a cold key's load first: it holds the device itself
        with device.busy() if busy else nullcontext():
            yield device, stop, warm


def generate(text: str, max_length: int = 128, temperature: float = 0.7, seed: int | None = None) -> dict[str, Any]:
    """The ``generate`` workload: :func:`predict` on this worker's GPU (CUDA when real, CPU when simulated).

    With ``serving.batching.generate`` enabled, the requests of the same ``max_length`` that this GPU runs at
    the same moment are generated together (:func:`predict_many` through a worker-side
    :class:`~altlas_dask.worker.batching.Batcher`); each stays its own task, with its own stop flag.
    """
    check_params(text, max_length, temperature, seed)
    settings = _batching("generate")
    batching = settings is not None and settings.max_batch_size > 1
    with _on_gpu(busy=not batching) as (device, stop, warm):
        model = get_model(device.torch_device)
        if not batching:
            result = predict(text, max_length, temperature, seed, model=model, stop=stop)
        else:
            from altlas_dask.worker.batching import batcher

            def run(rows: list[tuple[dict[str, Any], threading.Event | None]]) -> list[Any]:
                with device.busy():  # one batch holds the device once, for all its requests
                    if len(rows) == 1:  # alone: the single-request loop is cheaper, and gives the same text
                        ((one, one_stop),) = rows
                        try:
                            return [{**predict(**one, model=model, stop=one_stop), "batch_size": 1}]
                        except Exception as exc:
                            return [exc]
                    return predict_many([r[0] for r in rows], model=model, stops=[r[1] for r in rows])

            key = ("generate", device.torch_device, max_length)
            item = {"text": text, "max_length": max_length, "temperature": temperature, "seed": seed}
            result = batcher(key, run, settings.max_batch_size, settings.max_wait_ms / 1000)((item, stop))
    return {**result, **_placed_on(device, warm)}


def _placed_on(device: Any, warm: bool | None) -> dict[str, Any]:
    """What a result tells of where it ran: the GPU, and whether it found its affinity's state there."""
    return {"gpu": device.index, "uuid": device.uuid, **({} if warm is None else {"warm": warm})}


def _worker_config() -> Any:
    """This GPU worker's configuration (its plugin's), or None when not on one."""
    from altlas_dask.worker.binding import PLUGIN_NAME

    try:
        from distributed import get_worker

        plugin = get_worker().plugins.get(PLUGIN_NAME)
    except ValueError:  # not on a worker
        return None
    return getattr(plugin, "config", None)


def _batching(model_name: str) -> Any:
    """``serving.batching.<model_name>`` of this worker's configuration, or None when it is off."""
    config = _worker_config()
    settings = config.serving.batching.get(model_name) if config is not None else None
    return settings if settings is not None and settings.enabled else None


def _hold_affinity(device: Any, stop: threading.Event) -> bool | None:
    """The task's ``gpu_options.affinity`` state on ``device``, loaded first if cold (see
    :mod:`altlas_dask.model.warm`): whether it was warm, None when the task names no key."""
    from altlas_dask.gpus.dask_worker_internals import current_task_annotation
    from altlas_dask.model.warm import hold
    from altlas_dask.options import ANNOTATION

    key = (current_task_annotation(ANNOTATION) or {}).get("affinity")
    config = _worker_config()
    if key is None or config is None:
        return None
    sim = config.simulation
    return hold(device, key, stop, sim.affinity_cache_keys, sim.affinity_load_s)


def generate_batch(items: Sequence[dict[str, Any]]) -> list[dict[str, Any] | BaseException]:
    """One batch task (a ``batch_predict`` chunk, or the gateway's dynamic batch of ``predict`` requests): each
    item's ``text``/``max_length``/``temperature``/``seed``, one forward pass per generated character for all
    (:func:`predict_many`). Results in input order; an invalid or failing item has its exception in its place,
    so it fails alone, and a row stopped alone (:func:`~altlas_dask.model.row_stops.stop_row`) stops alone. The
    batch's size is noted in the task's Dask metadata (the router's explanation)."""
    from distributed import get_worker

    from altlas_dask.gpus.dask_worker_internals import annotate_current_task
    from altlas_dask.model.row_stops import EitherStop, row_stops
    from altlas_dask.worker.batching import BATCH_METADATA

    with _on_gpu() as (device, stop, warm), row_stops(get_worker().get_current_task(), len(items)) as rows:
        start = time.perf_counter()
        stops = [EitherStop(stop, row) for row in rows]  # a request cancelled alone stops its own row
        results = predict_many(items, model=get_model(device.torch_device), stops=stops)
        annotate_current_task(BATCH_METADATA, {"size": len(items), "share_s": time.perf_counter() - start})
    return [r if isinstance(r, BaseException) else {**r, **_placed_on(device, warm)} for r in results]


def warm_up(dask_worker: Any = None) -> str:
    """Load the model on this worker's device now: ``client.run(warm_up)`` passes ``dask_worker``."""
    from altlas_dask.worker.binding import PLUGIN_NAME, current_device

    plugin = dask_worker.plugins.get(PLUGIN_NAME) if dask_worker is not None else None
    device = plugin.device if plugin is not None and plugin.device is not None else current_device()
    get_model(device.torch_device)
    return device.torch_device
