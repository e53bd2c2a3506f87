"""Every use of distributed's internal *worker* API in one place (the scheduler's is in scheduler_plugins).

Four paths need it. A batched call notes its batch on the task it ran for (:func:`annotate_current_task`:
the task's ``metadata``, which Dask's own task-finished message carries to the scheduler). A kernel asks
whether its task is still wanted when it starts (a cancel may have come first: :func:`still_executing`).
A generation reads the ``gpu_options.affinity`` its task was annotated with (:func:`current_task_annotation`).
A worker started from the command line with ``--preload altlas_dask.worker`` learns its GPU's memory inside
the preload, after ``Worker.__init__`` took its ``resources`` and before
it registers with the scheduler. ``Worker.set_resources`` (public) tells a scheduler the worker is
already registered with, so before registration the plugin writes the worker state that registration
sends. Clusters that altlas-dask starts pass ``resources`` in each worker's spec and never come here.
If a Dask upgrade changes this, this module and ``tests/test_worker_internals.py`` are what break.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distributed import Worker, get_worker


def advertised_resources(worker: Worker) -> dict[str, float]:
    """The resources the worker advertises (what it registers with, or last sent)."""
    return dict(worker.state.total_resources)


def advertise_before_registration(worker: Worker, resources: Mapping[str, float]) -> None:
    """Add ``resources`` to what the worker will register with (it must not have registered yet)."""
    if worker.status.name == "running":
        raise RuntimeError("the worker is registered already: use `await worker.set_resources(...)`")
    for name, quantity in resources.items():
        held = worker.state.total_resources.get(name, 0.0) - worker.state.available_resources.get(name, 0.0)
        worker.state.total_resources[name] = float(quantity)
        worker.state.available_resources[name] = float(quantity) - held


def still_executing(worker: Worker, key: object) -> bool:
    """Whether the worker still runs ``key`` (False once it was cancelled, released or forgotten)."""
    ts = worker.state.tasks.get(key)
    return ts is not None and ts.state in ("executing", "long-running")


def _current_task() -> Any:
    """The worker's state of the task this thread executes; None outside a worker's task thread."""
    try:
        worker = get_worker()
        key = worker.get_current_task()
    except (ValueError, KeyError):
        return None
    return worker.state.tasks.get(key)


def _current_metadata() -> dict[str, Any] | None:
    """``metadata`` of the task this thread executes on a worker; None outside a worker's task thread."""
    ts = _current_task()
    return None if ts is None else ts.metadata


def current_task_annotation(name: str) -> Any:
    """``annotations[name]`` of the task this thread executes on a worker (what the client annotated it with,
    e.g. ``gpu_options``); None outside a worker's task thread or when the task has no such annotation."""
    ts = _current_task()
    return None if ts is None else (ts.annotations or {}).get(name)


def annotate_current_task(name: str, value: Any) -> bool:
    """Set ``metadata[name]`` of the task this thread executes on a worker (msgpack-able ``value``); the
    worker sends it with the task's result (``TaskFinishedMsg.metadata``) and the scheduler's transition to
    memory passes it to plugins as ``metadata``. False (nothing done) outside a worker's task thread."""
    metadata = _current_metadata()
    if metadata is not None:
        metadata[name] = value
    return metadata is not None


def add_to_current_task(name: str, amount: float) -> bool:
    """Add ``amount`` to ``metadata[name]`` of the task this thread executes (as :func:`annotate_current_task`)."""
    metadata = _current_metadata()
    if metadata is not None:
        metadata[name] = metadata.get(name, 0.0) + amount
    return metadata is not None
