"""Submit a named workload N times and summarise the run (shared by ``altlas-dask submit`` and the console).

A run of ``count`` workload calls is cut into Dask tasks of ``batch_size`` calls each
(``batch_size=1``: one task per call). Each task's latency is measured on the client,
from submission to the moment its future finished (queueing included).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from distributed import Future

from altlas_dask.client.workloads import Workload, get_workload
from altlas_dask.errors import TaskCancelledError


def run_calls(count: int, fn: Callable[..., Any], params: Mapping[str, Any]) -> list[Any]:
    """One Dask task: ``count`` calls of a workload function (runs on a GPU worker)."""
    return [fn(**params) for _ in range(count)]


def parse_params(workload: Workload, assignments: Iterable[str]) -> dict[str, Any]:
    """``["work_gflop=10"]`` -> ``{"work_gflop": 10.0}``, typed like the workload's defaults."""
    params: dict[str, Any] = {}
    for item in assignments:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--param takes key=value, got {item!r}")
        if name not in workload.defaults:
            raise ValueError(f"workload {workload.name!r} takes {sorted(workload.defaults)}; unknown: {name!r}")
        params[name] = coerce(workload.defaults[name], raw.strip(), name)
    return params


def coerce(default: Any, raw: str, name: str) -> Any:
    """``raw`` converted to the type of ``default`` (bool, int, float or str; a None default takes a number)."""
    if default is None:
        if raw.lower() in ("", "none", "null"):
            return None
        for kind in (int, float):
            try:
                return kind(raw)
            except ValueError:
                pass
        return raw
    kind = type(default)
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return raw.lower() in ("true", "1", "yes")
        return kind(raw) if kind in (int, float) else raw
    except ValueError:
        raise ValueError(f"parameter {name!r} must be a {kind.__name__}, got {raw!r}") from None


PREVIEW_CHARS = 200


def preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """One call's result in one line: generated text as it is, anything else as its repr, cut at ``limit``."""
    text = value["text"] if isinstance(value, Mapping) and isinstance(value.get("text"), str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def task_preview(result: Any, limit: int = PREVIEW_CHARS) -> str:
    """A task's result (a list of its calls' results) in one line: the first call's, and how many more."""
    if isinstance(result, list) and result:
        more = f" (+{len(result) - 1} more calls)" if len(result) > 1 else ""
        return preview(result[0], limit) + more
    return preview(result, limit)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated ``q``-th percentile (0-100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class GpuRow:
    gpu: str
    tasks: int = 0
    calls: int = 0
    latencies: list[float] = field(default_factory=list, repr=False)

    def row(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "tasks": self.tasks,
            "calls": self.calls,
            "p50_latency_s": percentile(self.latencies, 50),
            "p95_latency_s": percentile(self.latencies, 95),
        }


@dataclass
class RunSummary:
    """What a finished run did: counts, wall time, latency percentiles, per-GPU rows, first errors."""

    name: str
    workload: str
    calls: int
    tasks: int
    completed: int
    failed: int
    cancelled: int
    wall_s: float
    throughput: float  # completed calls per second of wall time
    p50_latency_s: float | None
    p95_latency_s: float | None
    per_gpu: list[dict[str, Any]]
    errors: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WorkloadRun:
    """The futures of one submitted run; keep this object alive until the run is done."""

    name: str
    workload: str
    futures: list[Future]
    sizes: list[int]
    submitted: float
    gpu_options: dict[str, Any]
    finished_at: dict[str, float] = field(default_factory=dict)
    _summary: RunSummary | None = None

    @property
    def calls(self) -> int:
        return sum(self.sizes)

    def done_calls(self) -> int:
        return sum(size for f, size in zip(self.futures, self.sizes, strict=True) if f.done())

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def results(self, limit: int = 20) -> list[tuple[str, str]]:
        """``(task key, result preview)`` of up to ``limit`` finished tasks, in submission order."""
        finished = [f for f in self.futures if f.status == "finished"][:limit]
        values = finished[0].client.gather(finished) if finished else []
        return [(f.key, task_preview(v)) for f, v in zip(finished, values, strict=True)]

    def result_of(self, key: str) -> str | None:
        """The preview of one task's result, if that task is in this run and finished."""
        future = next((f for f in self.futures if f.key == key), None)
        if future is None or future.status != "finished":
            return None
        return task_preview(future.result())

    def cancel(self) -> None:
        if self.futures:
            self.futures[0].client.cancel([f for f in self.futures if not f.done()])

    def summary(self) -> RunSummary:
        """Counts and latencies; call once :meth:`done` (cached then)."""
        if self._summary is not None:
            return self._summary
        summary = self._summarise()
        if self.done() and len(self.finished_at) >= len(self.futures):  # every done-callback has run
            self._summary = summary
        return summary

    def _summarise(self) -> RunSummary:
        finished = [f for f in self.futures if f.status == "finished"]
        results = finished[0].client.gather(finished) if finished else []
        rows: dict[str, GpuRow] = {}
        latencies: list[float] = []
        completed_calls = 0
        for future, result, size in zip(finished, results, self._sizes_of(finished), strict=True):
            latency = self.finished_at.get(future.key, time.time()) - self.submitted
            latencies.append(latency)
            completed_calls += size
            gpu = _gpu_of(result)
            row = rows.setdefault(gpu, GpuRow(gpu))
            row.tasks, row.calls = row.tasks + 1, row.calls + size
            row.latencies.append(latency)
        failed = cancelled = 0
        errors: list[str] = []
        for future in self.futures:
            if future.status in ("error", "cancelled"):
                exc = future.exception() if future.status == "error" else None
                if exc is None or isinstance(exc, TaskCancelledError):
                    cancelled += 1
                else:
                    failed += 1
                    if len(errors) < 5:
                        errors.append(f"{future.key}: {type(exc).__name__}: {exc}")
        end = max(self.finished_at.values(), default=time.time()) if self.done() else time.time()
        wall = max(end - self.submitted, 1e-9)
        return RunSummary(
            name=self.name,
            workload=self.workload,
            calls=self.calls,
            tasks=len(self.futures),
            completed=len(finished),
            failed=failed,
            cancelled=cancelled,
            wall_s=wall,
            throughput=completed_calls / wall,
            p50_latency_s=percentile(latencies, 50),
            p95_latency_s=percentile(latencies, 95),
            per_gpu=[rows[k].row() for k in sorted(rows, key=_gpu_sort_key)],
            errors=errors,
        )

    def _sizes_of(self, futures: list[Future]) -> list[int]:
        size = {f.key: s for f, s in zip(self.futures, self.sizes, strict=True)}
        return [size[f.key] for f in futures]


def _gpu_of(result: Any) -> str:
    """The GPU a task ran on, from the workload results (each returns ``{"gpu": index, ...}``)."""
    first = result[0] if isinstance(result, list) and result else result
    if isinstance(first, Mapping) and first.get("gpu") is not None:
        return str(first["gpu"])
    return "?"


def _gpu_sort_key(gpu: str) -> tuple[int, str]:
    return (int(gpu), "") if gpu.isdigit() else (1 << 30, gpu)


def submit_workload(
    client: Any,
    workload: str,
    count: int,
    *,
    batch_size: int = 1,
    params: Mapping[str, Any] | None = None,
    gpu_options: Mapping[str, Any] | None = None,
) -> WorkloadRun:
    """Submit ``count`` calls of ``workload`` in tasks of ``batch_size`` calls; bad input raises ValueError.

    ``client`` is an :class:`altlas_dask.Client`. ``gpu_options`` default to the workload's
    ``task_type`` and, where the workload takes ``memory_mb``, that memory as the routing hint.
    """
    spec = get_workload(workload)
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a whole number >= 1 (got {count!r})")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a whole number >= 1 (got {batch_size!r})")
    kwargs = spec.call_args(**dict(params or {}))
    hint: dict[str, Any] = {"task_type": spec.task_type}
    if isinstance(kwargs.get("memory_mb"), int):
        hint["memory_mb"] = kwargs["memory_mb"]
    if (size := spec.cost_of(kwargs)) is not None:
        hint["cost"] = size * batch_size  # a task runs batch_size calls (the last one maybe fewer)
    options = client.gpu_options({**hint, **{k: v for k, v in (gpu_options or {}).items() if v is not None}})
    sizes = [min(batch_size, count - start) for start in range(0, count, batch_size)]
    name = f"{spec.name}-{uuid.uuid4().hex[:8]}"
    keys = [f"{name}-{i:05d}" for i in range(len(sizes))]
    submitted = time.time()
    futures = client.map(run_calls, sizes, key=keys, fn=spec.fn, params=kwargs, gpu_options=options, pure=False)
    run = WorkloadRun(name, spec.name, futures, sizes, submitted, options.wire())
    for future in futures:
        future.add_done_callback(lambda f, done=run.finished_at: done.setdefault(f.key, time.time()))
    return run
