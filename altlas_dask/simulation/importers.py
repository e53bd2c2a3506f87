"""Public traces of real LLM inference traffic as replay traces (``altlas-dask replay --format NAME FILE``).

Each request keeps its recorded arrival time and token counts; the cost model (docs/replay.md) turns the
token counts into what the simulator needs:

* ``work_gflop`` (ground truth, never shown to the router) = ``PREFILL_GFLOP`` x prompt tokens +
  ``DECODE_GFLOP`` x generated tokens: a 13B-class model served with continuous batching, on the
  simulator's A100 model (2,000 GFLOP/s): prefill 0.125 ms per prompt token, decode 0.75 ms per generated
  token and request (25 ms a step shared by a batch of about 32).
* ``memory_mb`` = ``BASE_MB`` + the KV cache, ``kv_mb`` per token of prompt and generation (its peak).
* ``cost`` (what the client states, ``gpu_options.cost``) = prompt + generated tokens: the prompt length
  and the generation's length limit, as the REST API passes them.
* Mooncake traces: ``affinity`` = the request's first two prompt blocks (the conversation it continues),
  and ``affinity_gflop`` = the prefill of its leading blocks that earlier requests with that key already
  had: the work a GPU that holds that prefix's KV cache skips.

Formats: ``azure-llm`` (Azure LLM inference trace 2023: ``TIMESTAMP,ContextTokens,GeneratedTokens``) and
``mooncake`` (Mooncake FAST'25 traces: JSONL with ``timestamp`` ms, ``input_length``, ``output_length``,
``hash_ids`` of 512-token prompt blocks).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from altlas_dask.simulation.trace import TraceError, TraceTask

PREFILL_GFLOP = 0.25  # per prompt token
DECODE_GFLOP = 1.5  # per generated token
BASE_MB = 1024  # activations and workspace of one request
MOONCAKE_BLOCK_TOKENS = 512


def _task(n: int, t: float, prompt: int, generated: int, task_type: str, kv_mb: float, **extra: object) -> TraceTask:
    return TraceTask(
        t=round(t, 6),
        id=f"{task_type}-{n}",
        task_type=task_type,
        memory_mb=BASE_MB + math.ceil(kv_mb * (prompt + generated)),
        work_gflop=round(PREFILL_GFLOP * prompt + DECODE_GFLOP * generated, 3),
        cost=max(prompt + generated, 1),
        **extra,
    )


def _count(row: dict, name: str, where: str) -> int:
    value = row.get(name)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise TraceError(f"{where}: field {name!r} = {value!r}: not a whole number") from None
    if number < 0:
        raise TraceError(f"{where}: field {name!r} = {number}: must be >= 0")
    return number


def azure_llm(path: Path, task_type: str = "", kv_mb: float = 2.0) -> Iterator[TraceTask]:
    """Azure LLM inference trace 2023 (github.com/Azure/AzurePublicDataset, CC-BY 4.0). ``task_type``
    defaults from the file name: ``chat`` for ``*_conv.csv``, ``code`` for ``*_code.csv``."""
    task_type = task_type or ("code" if "code" in path.stem.lower() else "chat")
    first: datetime | None = None
    with path.open(newline="") as f:
        for n, row in enumerate(csv.DictReader(f), 2):
            where = f"{path.name} line {n}"
            try:
                at = datetime.fromisoformat(str(row.get("TIMESTAMP", "")).strip()[:26])
            except ValueError:
                raise TraceError(
                    f"{where}: field 'TIMESTAMP' = {row.get('TIMESTAMP')!r}: not a date and time"
                ) from None
            first = first or at
            prompt, generated = _count(row, "ContextTokens", where), _count(row, "GeneratedTokens", where)
            yield _task(n - 2, max((at - first).total_seconds(), 0.0), prompt, generated, task_type, kv_mb)


def mooncake(path: Path, task_type: str = "", kv_mb: float = 0.5) -> Iterator[TraceTask]:
    """Mooncake FAST'25 traces (github.com/kvcache-ai/Mooncake, FAST25-release/traces, Apache-2.0)."""
    task_type = task_type or "conversation"
    seen: dict[str, set[int]] = {}  # affinity key -> prompt blocks its earlier requests had
    with path.open() as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            where = f"{path.name} line {n + 1}"
            try:
                row = json.loads(line)
                blocks = [int(h) for h in row.get("hash_ids", [])]
            except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
                raise TraceError(f"{where}: not a JSON object with a list of whole-number hash_ids") from None
            prompt, generated = _count(row, "input_length", where), _count(row, "output_length", where)
            key = "-".join(map(str, blocks[:2])) or f"request-{n}"
            known = seen.setdefault(key, set())
            warm = 0
            while warm < len(blocks) and blocks[warm] in known:
                warm += 1
            known.update(blocks)
            cached = min(warm * MOONCAKE_BLOCK_TOKENS, prompt)
            yield _task(
                n, _count(row, "timestamp", where) / 1000, prompt, generated, task_type, kv_mb,
                affinity=f"prefix-{key}", affinity_gflop=round(PREFILL_GFLOP * cached, 3),
            )  # fmt: skip


FORMATS: dict[str, Callable[..., Iterator[TraceTask]]] = {"azure-llm": azure_llm, "mooncake": mooncake}


def import_trace(fmt: str, path: str | Path, start: int = 0, count: int | None = None) -> list[TraceTask]:
    """Tasks ``start`` .. ``start + count`` of ``path`` read as ``fmt``, their times from the window's first."""
    reader = FORMATS.get(fmt)
    if reader is None:
        raise TraceError(f"unknown trace format {fmt!r} (known: {', '.join(FORMATS)})")
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"no trace file {path}")
    tasks = []
    for n, task in enumerate(reader(path)):
        if n < start:
            continue
        if count is not None and len(tasks) >= count:
            break
        tasks.append(task)
    origin = tasks[0].t if tasks else 0.0
    return [t.model_copy(update={"t": round(t.t - origin, 6)}) for t in tasks]
