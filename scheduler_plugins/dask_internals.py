"""Every use of distributed's internal scheduler API in one place.

Dask has no supported hook to hold a task and place it later
(dask/distributed#7900), so the router restricts held tasks to a placeholder
address (they go to ``no-worker``), then restricts them to the chosen worker
and transitions them to ``processing``. If a Dask upgrade changes these
internals, this module and its tests are what break.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from distributed.comm import normalize_address
from distributed.core import error_message
from distributed.protocol import pickle
from distributed.scheduler import Scheduler, TaskState

from altlas_dask.gpus.device import DEVICE_SECONDS_METADATA
from altlas_dask.options import ANNOTATION
from altlas_dask.resources import GPU_MEMORY_RESOURCE, GPU_RESOURCE
from altlas_dask.worker.batching import BATCH_METADATA
from altlas_dask.worker.binding import METRIC_NAME

logger = logging.getLogger(__name__)

#: A worker address that never exists: tasks restricted to it wait in ``no-worker``.
HELD = "altlas://held"


def hold(ts: TaskState) -> None:
    """Keep the task on the scheduler until :func:`place` releases it."""
    ts.worker_restrictions = {HELD}
    ts.loose_restrictions = False


def pin(ts: TaskState, address: str, memory_mb: int, rank: tuple[int, int] | None = None) -> None:
    """Restrict the task to exactly one worker; its memory estimate becomes a Dask resource.

    ``rank`` (the core's ``Place.rank``) becomes the task's Dask priority: a worker's ready tasks start in
    priority order as its threads free up (``WorkerState._next_ready_task``), so the tasks placed there to
    wait for a slot start in the core's order, not in the order their graphs were submitted.
    """
    if rank is not None:
        ts.priority = rank
    ts.worker_restrictions = {address}
    ts.loose_restrictions = False
    resources = dict(ts.resource_restrictions or {})
    if memory_mb > 0:
        resources[GPU_MEMORY_RESOURCE] = float(memory_mb)
    ts.resource_restrictions = resources or None


def is_held(ts: TaskState) -> bool:
    return ts.state == "no-worker"


def place(
    scheduler: Scheduler, placements: Iterable[tuple[TaskState, str, int, tuple[int, int] | None]], stimulus_id: str
) -> None:
    """Pin held tasks to their workers and start them, in one batch of transitions."""
    recommendations = {}
    for ts, address, memory_mb, rank in placements:
        pin(ts, address, memory_mb, rank)
        recommendations[ts.key] = "processing"
    if recommendations:
        scheduler.transitions(recommendations, stimulus_id)


def fail(scheduler: Scheduler, ts: TaskState, error: BaseException, stimulus_id: str) -> bool:
    """Make a held, waiting or running task err with ``error`` (the client's future raises it).

    Returns False when the task is in a state that cannot err now (try again later).
    """
    blob = pickle.dumps(error)
    kwargs: dict[str, Any] = {"exception": blob, "cause": ts.key, "exception_text": repr(error)}
    if ts.state == "processing":
        worker = ts.processing_on.address if ts.processing_on else None
        recommendations = scheduler.transition(ts.key, "erred", stimulus_id, worker=worker, **kwargs)
        if worker in scheduler.workers:  # stop it there; the worker drops its result
            scheduler.worker_send(worker, {"op": "free-keys", "keys": [ts.key], "stimulus_id": stimulus_id})
    elif ts.state == "no-worker":
        recommendations = scheduler.transition(ts.key, "erred", stimulus_id, **kwargs)
    elif ts.state in ("waiting", "released"):
        # No waiting -> erred transition takes an exception: blame the task itself, release it, then err it.
        ts.exception, ts.exception_text, ts.traceback, ts.exception_blame = blob, repr(error), None, ts
        if ts.state == "waiting":
            scheduler.transitions({ts.key: "released"}, stimulus_id)
        recommendations = {ts.key: "erred"}
    else:
        return ts.state in ("memory", "erred", "forgotten")
    scheduler.transitions(recommendations, stimulus_id)
    return True


def release_from(scheduler: Scheduler, keys: Iterable[str], stimulus_id: str) -> None:
    """Take processing tasks back from their worker so they are placed again (GPU unhealthy)."""
    recommendations = {}
    for key in keys:
        ts = scheduler.tasks.get(key)
        if ts is not None and ts.state == "processing":
            hold(ts)
            recommendations[key] = "released"
    if recommendations:
        scheduler.transitions(recommendations, stimulus_id)


def intercept_task_erred(scheduler: Scheduler, before: Callable[[TaskState, dict[str, Any]], None]) -> None:
    """Call ``before(ts, msg)`` when a worker reports a task error, before Dask decides on retries.

    ``before`` may set ``ts.retries`` (retry or not) and the task's restrictions.
    """
    original = scheduler.stream_handlers["task-erred"]

    def handle_task_erred(key: str, stimulus_id: str, **msg: Any) -> None:
        ts = scheduler.tasks.get(key)
        if ts is not None and ts.state == "processing":
            before(ts, msg)
        original(key=key, stimulus_id=stimulus_id, **msg)

    handle_task_erred.__wrapped__ = original  # type: ignore[attr-defined]
    scheduler.stream_handlers["task-erred"] = handle_task_erred


def set_priority(ts: TaskState, priority: int) -> None:
    """Make the 1-5 priority Dask's own (lower tuple runs first), keeping Dask's tie-breakers."""
    rest = tuple(ts.priority[1:]) if ts.priority else ()
    ts.priority = (-priority, *rest)


# -- reading tasks and workers -------------------------------------------------------------------


def is_gpu_task(ts: TaskState) -> bool:
    """A task with a ``gpu_options`` annotation or a ``GPU`` resource restriction."""
    return ANNOTATION in (ts.annotations or {}) or GPU_RESOURCE in (ts.resource_restrictions or {})


def gpu_options(ts: TaskState) -> Any:
    """The task's raw ``gpu_options`` annotation (validated by the core), or None."""
    return (ts.annotations or {}).get(ANNOTATION)


def set_gpu_options(ts: TaskState, options: Any) -> None:
    """Replace the task's ``gpu_options`` annotation (the router binds it to the verified user)."""
    ts.annotations = {**(ts.annotations or {}), ANNOTATION: options}


def dependencies_done(ts: TaskState) -> bool:
    return all(dts.state == "memory" for dts in ts.dependencies)


def input_locations(ts: TaskState) -> dict[str, int]:
    """Worker address -> bytes of the task's inputs it holds (``who_has`` / ``nbytes``, what Dask's
    ``worker_objective`` weighs; the router pins tasks, so its strategies weigh it instead)."""
    out: dict[str, int] = {}
    for dts in ts.dependencies:
        nbytes = dts.get_nbytes()
        for ws in dts.who_has or ():
            out[ws.address] = out.get(ws.address, 0) + nbytes
    return out


def gpu_report(scheduler: Scheduler, worker: str) -> Any:
    """The GPU state a worker's last heartbeat carried (``worker.metrics``), or None (not a GPU worker).

    Each heartbeat brings a new object, so identity tells a fresh report from the last one.
    """
    ws = scheduler.workers.get(worker)
    return ws.metrics.get(METRIC_NAME) if ws is not None else None


def on_heartbeat(scheduler: Scheduler, heard: Callable[[str], None]) -> None:
    """Call ``heard(worker)`` after each heartbeat the scheduler takes in (then ``worker.metrics`` is new).

    ``Scheduler.handlers["heartbeat_worker"]`` is the RPC a worker calls with its metrics, looked up per
    message (distributed 2026.7.1); the address it sends is normalized as the handler does when it is not
    already a key of ``scheduler.workers``.
    """
    original = scheduler.handlers["heartbeat_worker"]

    def heartbeat_worker(*, address: str, resolve_address: bool = True, **kwargs: Any) -> Any:
        reply = original(address=address, resolve_address=resolve_address, **kwargs)
        if address not in scheduler.workers:
            address = normalize_address(scheduler.coerce_address(address, resolve_address))
        heard(address)
        return reply

    heartbeat_worker.__wrapped__ = original  # type: ignore[attr-defined]
    scheduler.handlers["heartbeat_worker"] = heartbeat_worker


# -- answering a worker's error report (inside intercept_task_erred's ``before``) --------------------


def retry_elsewhere(ts: TaskState) -> None:
    """Let Dask run the task once more; it comes back held (then the router places it again)."""
    ts.retries = 1
    hold(ts)


def give_up(ts: TaskState, msg: dict[str, Any], replacement: BaseException | None) -> None:
    """No Dask retry; the client sees ``replacement`` instead of the worker's error when given."""
    ts.retries = 0
    if replacement is not None:
        msg["exception"] = pickle.dumps(replacement)
        msg["exception_text"] = repr(replacement)


def compute_seconds(startstops: Any) -> float:
    """Seconds of compute in a transition's or an error message's ``startstops``."""
    return sum(s["stop"] - s["start"] for s in startstops or () if s.get("action") == "compute")


def measured(transition_kwargs: dict[str, Any]) -> tuple[tuple[int, float] | None, float | None]:
    """What the worker measured of the task, noted in its metadata (which Dask's task-finished message carries
    into the processing -> memory transition as ``metadata``): (batch size, this task's share of the batch
    call's seconds) when it ran in a worker-side batch (:func:`altlas_dask.worker.batching._report`), and the device
    seconds its GPU measured (:func:`altlas_dask.gpus.device.report_device_seconds`); None where not noted."""
    metadata = transition_kwargs.get("metadata") or {}
    batch, device_s = metadata.get(BATCH_METADATA), metadata.get(DEVICE_SECONDS_METADATA)
    try:
        batch = (int(batch["size"]), float(batch["share_s"])) if isinstance(batch, dict) else None
    except (KeyError, TypeError, ValueError):
        batch = None
    return batch, float(device_s) if isinstance(device_s, int | float) and device_s >= 0 else None


# -- the protocol gate (security.identity: tls): every message a server reads, before its handler -----


def gate_comms(server: Any, open_connection: Callable[[Any], Any]) -> None:
    """Show every message that ``server`` (a Scheduler or a Worker) reads on an incoming comm to a gate first.

    ``open_connection(comm)`` makes the gate of one comm (a :class:`scheduler_plugins.handler_policy.Connection`):
    a refused RPC is answered with a ``PermissionError`` (the caller's ``await rpc.op(...)`` raises it) and the
    comm reads on; refused stream messages are dropped. Dask dispatches each incoming comm through
    ``Server._handle_comm`` (looked up per comm), so the gate wraps that and the comm's ``read``.
    """
    original = server._handle_comm
    if getattr(original, "altlas_gated", False):
        return

    async def handle_comm(comm: Any) -> None:
        gate = open_connection(comm)
        read = comm.read

        async def read_admitted(deserializers: Any = None) -> Any:
            while True:
                msg = await read(deserializers)
                if isinstance(msg, (list, tuple)):
                    return gate.admit_batch(msg) if gate.streaming else msg
                if gate.streaming:
                    kept = gate.admit_batch([msg])
                    if kept:
                        return msg
                    continue
                refusal = gate.admit(msg)
                if refusal is None:
                    return msg
                logger.warning("refused %s", refusal)
                if msg.get("op") == "register-client":  # the reply Client._ensure_connected reads
                    await comm.write([{"op": "stream-start", "error": f"PermissionError: {refusal}"}])
                elif msg.get("reply", True):
                    await comm.write(error_message(PermissionError(refusal), status="uncaught-error"))

        comm.read = read_admitted
        await original(comm)

    handle_comm.altlas_gated = True  # type: ignore[attr-defined]
    server._handle_comm = handle_comm


def wanted_by(scheduler: Scheduler, key: Any, dependents: bool = False) -> set[str] | None:
    """Client ids that want ``key`` (with ``dependents``: or any task that needs it); None: no such task."""
    try:
        ts = scheduler.tasks.get(key)
    except TypeError:  # an unhashable "key" from a raw message
        return set()
    if ts is None:
        return None
    clients = {cs.client_key for cs in ts.who_wants or ()}
    if dependents:
        for dts in ts.dependents:
            clients.update(cs.client_key for cs in dts.who_wants or ())
    return clients


def add_rpc_handlers(server: Any, handlers: dict[str, Callable[..., Any]]) -> None:
    """Serve ``handlers`` as RPCs of ``server`` (``await client.scheduler.<name>(...)``).

    ``Server.handlers`` is the name -> coroutine table ``Server.handle_comm`` looks ops up in, read per
    message, so entries added after ``__init__`` are served (distributed 2026.7.1).
    """
    server.handlers.update(handlers)


def wrap_stream_handler(
    scheduler: Scheduler, op: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any] | None]
) -> None:
    """Replace the scheduler's batched-stream handler ``op`` (e.g. ``cancel-keys``) with ``wrap(original)``.

    ``Scheduler.stream_handlers`` maps the ``op`` of each message on a client's batched stream to its
    handler, looked up per message in ``Scheduler.handle_stream`` (distributed 2026.7.1). Nothing changes
    when the op is unknown or ``wrap`` returns None.
    """
    original = scheduler.stream_handlers.get(op)
    if original is None:
        return
    replacement = wrap(original)
    if replacement is not None:
        scheduler.stream_handlers[op] = replacement


def has_subscribers(scheduler: Scheduler, topic: str) -> bool:
    """Whether a client subscribed to event ``topic`` (``Client.subscribe_topic``): ``Scheduler._broker`` holds the
    topics and their subscribers (distributed 2026.7.1); a topic nobody reads is not worth a ``log_event``."""
    found = scheduler._broker._topics.get(topic)
    return found is not None and bool(found.subscribers)


def held_tasks(scheduler: Scheduler) -> list[TaskState]:
    """Tasks held by :func:`hold` (in ``no-worker``, restricted to :data:`HELD`).

    ``Scheduler.unrunnable`` is the scheduler's dict of tasks in ``no-worker`` (distributed 2026.7.1).
    """
    return [ts for ts in scheduler.unrunnable if ts.worker_restrictions and HELD in ts.worker_restrictions]


def replace_adaptive_target(scheduler: Scheduler, target: Callable[..., int]) -> None:
    """Make ``target`` the scheduler's ``adaptive_target``: the method ``/api/v1/adaptive_target`` calls and the
    ``adaptive_target`` RPC, which ``Scheduler.__init__`` bound to the old method (distributed 2026.7.1)."""
    scheduler.adaptive_target = target  # type: ignore[method-assign]
    scheduler.handlers["adaptive_target"] = target


def add_dashboard_pages(pages: dict[str, Callable[..., Any]]) -> bool:
    """Add Bokeh pages (URL path -> ``doc(scheduler, extra, doc)``) to the scheduler dashboard.

    ``distributed.dashboard.scheduler.applications`` is the module-level route table that
    ``Scheduler.__init__`` reads once (in ``distributed.dashboard.scheduler.connect``), so only schedulers
    built after this call serve the pages (distributed 2026.7.1). False when there is no dashboard (bokeh
    missing or a version Dask refuses).
    """
    try:
        from distributed.dashboard.scheduler import applications
    except ImportError as exc:
        logger.debug("no Dask dashboard (%s): pages %s are not registered", exc, list(pages))
        return False
    for path, doc in pages.items():
        applications.setdefault(path, doc)
    return True
