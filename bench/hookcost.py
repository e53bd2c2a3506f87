"""The router's CPU per task inside the Dask scheduler, split by hook and by callee.

Starts the 4-GPU router cluster of ``bench/overhead.py`` (its ``ModeCluster``: ``altlas_dask.Client``,
one update per submit), runs ``--tasks`` no-op GPU tasks ``--reps`` times, and reports per task the
scheduler thread's CPU time (``time.thread_time_ns``) spent in each router hook: ``update_graph``,
``transition`` and the tick the router schedules (dispatch of held work).
Thread CPU time is far less noisy than throughput on a shared machine, so this is the working metric
for the router's cost; ``bench/overhead.py`` measures the throughput it buys.

``--detail`` also times the main callees inside the hooks (the core's handlers by event, decisions,
metrics, accounting, the Dask-internals calls); each timed call adds about 0.5 us of timer overhead
to the figures of the calls around it, so compare hook totals from runs without ``--detail``.
``--plain`` interleaves a plain-Dask cluster (``resources={"GPU": 1}``) for the scheduler thread's
total CPU per task without the router. ``--cprofile`` adds one cProfile'd run (printed only).

Run: ``PYTHONPATH=. .venv/bin/python bench/hookcost.py [--tasks 5000] [--reps 3] [--detail] [--plain]``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from common import load_average, quiet
from overhead import ModeCluster

HOOKS = ("update_graph", "transition", "_tick")
HOOK_NAMES = {"_tick": "tick (dispatch)"}


class Meter:
    """Thread-CPU nanoseconds and calls per name (inclusive: nested timed calls count in both)."""

    def __init__(self) -> None:
        self.ns: defaultdict[str, int] = defaultdict(int)
        self.calls: defaultdict[str, int] = defaultdict(int)

    def reset(self) -> None:
        self.ns.clear()
        self.calls.clear()

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        clock, ns, calls = time.thread_time_ns, self.ns, self.calls

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                ns[name] += clock() - t0
                calls[name] += 1

        return timed

    def wrap_attr(self, obj: Any, attr: str, name: str | None = None) -> None:
        setattr(obj, attr, self.wrap(name or attr, getattr(obj, attr)))


def instrument(plugin: Any, detail: bool) -> Meter:
    """Wrap the router's hooks (instance attributes: Dask and the router look them up on each call), and
    with ``detail`` the main callees. (No-op tasks never err: a worker's error report is not timed.)"""
    meter = Meter()
    for hook in HOOKS:
        meter.wrap_attr(plugin, hook, HOOK_NAMES.get(hook, hook))
    if not detail:
        return meter
    import scheduler_plugins.gpu_router as gr
    from altlas_dask.gpus.state import GpuState
    from altlas_dask.scheduling import dispatch as dispatch_module
    from altlas_dask.scheduling.gpus import GpuSlot
    from altlas_dask.scheduling.tasks import TaskRecord

    core = plugin.core
    core.event_handlers = {t: meter.wrap(f"core.{t.__name__}", fn) for t, fn in core.event_handlers.items()}
    for part, attrs in (
        (core.dispatch, ("decide", "assign", "run_pass", "unassign", "recently_used")),
        (core.admission, ("finish", "enqueue")),
    ):
        for attr in attrs:
            meter.wrap_attr(part, attr, f"core.{type(part).__name__}.{attr}")
    meter.wrap_attr(core.gpus, "snapshot", "core.gpus.snapshot")
    meter.wrap_attr(core.estimates, "performance", "core.estimates.performance")
    dispatch_module.decide = meter.wrap("candidates.decide", dispatch_module.decide)
    TaskRecord.record = meter.wrap("TaskRecord.record", TaskRecord.record)
    GpuState.with_ = meter.wrap("GpuState.with_ (a GPU view built)", GpuState.with_)
    GpuSlot.view = meter.wrap("GpuSlot.view", GpuSlot.view)
    meter.wrap_attr(plugin, "_apply", "router._apply")
    meter.wrap_attr(plugin.metrics, "observe", "router metrics (decisions, queue wait, records)")
    meter.wrap_attr(plugin.store, "record_task", "store.record_task")
    meter.wrap_attr(plugin.store, "add_usage", "store.add_usage")
    meter.wrap_attr(plugin.identities, "task_options", "identities.task_options")
    for attr in (
        "pin",
        "hold",
        "place",
        "set_priority",
        "input_locations",
        "dependencies_done",
        "is_gpu_task",
        "gpu_options",
        "measured",
    ):
        meter.wrap_attr(gr.dx, attr, f"dx.{attr}")
    return meter


def thread_cpu_clock(name: str) -> Callable[[], float]:
    """CPU seconds of this process's thread called ``name`` (0 when there is none)."""
    import threading

    found = [t for t in threading.enumerate() if t.name == name and t.ident is not None]
    if not found:
        return lambda: 0.0
    clock_id = time.pthread_getcpuclockid(found[0].ident)
    return lambda: time.clock_gettime(clock_id)


def profile_run(cluster: ModeCluster, n_tasks: int, path: str) -> None:
    """One more run with cProfile on the scheduler's event-loop thread; its stats go to ``path`` (pstats)."""
    import threading

    import distributed
    from overhead import _start_profiles

    cluster.settle()
    scheduler_prof, client_prof = _start_profiles(cluster.cluster)
    distributed.wait([cluster.submit(i) for i in range(n_tasks)])
    client_prof.disable()
    stopped = threading.Event()

    def disable() -> None:
        scheduler_prof.disable()
        stopped.set()

    cluster.cluster.cluster.scheduler.loop.add_callback(disable)
    stopped.wait(10)
    scheduler_prof.dump_stats(path)
    print(f"cProfile of the scheduler thread ({n_tasks} tasks): {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--detail", action="store_true", help="also time the main callees inside the hooks")
    parser.add_argument("--plain", action="store_true", help="interleave a plain-Dask cluster (total CPU baseline)")
    parser.add_argument("--cprofile", metavar="FILE", help="one more router run under cProfile, its stats to FILE")
    args = parser.parse_args()
    quiet()
    load_start = load_average()
    router = ModeCluster("router")
    plain = ModeCluster("plain") if args.plain else None
    meter = instrument(router.plugin, args.detail)
    writer_cpu = thread_cpu_clock("altlas-accounting")  # the router's SQLite writer (same process, own thread)
    per_rep: list[dict[str, float]] = []
    try:
        for rep in range(args.reps):
            if plain is not None and rep % 2 == 1:
                plain.throughput(args.tasks)
            meter.reset()
            writer0 = writer_cpu()
            rate = router.throughput(args.tasks)
            n = args.tasks
            time.sleep(0.5)  # the writer's last batch (flush_interval 0.2 s)
            row = {name: ns / n / 1e3 for name, ns in meter.ns.items()}
            row["hooks total"] = sum(meter.ns[HOOK_NAMES.get(h, h)] for h in HOOKS) / n / 1e3
            row["scheduler thread total"] = router.throughput_extra[-1]["scheduler_cpu_us"]
            row["accounting writer thread"] = (writer_cpu() - writer0) / n * 1e6
            row["submitting thread (client)"] = router.throughput_extra[-1]["submit_cpu_us"]
            hooks = [HOOK_NAMES.get(h, h) for h in HOOKS]
            if args.detail:
                hooks += [k for k in meter.calls if k.startswith(("GpuState", "GpuSlot", "core.gpus"))]
            calls = ", ".join(f"{h} {meter.calls[h] / n:.2f}" for h in hooks)
            per_rep.append(row)
            print(f"rep {rep + 1}: {rate:.0f} tasks/s; hooks {row['hooks total']:.1f} us/task; calls/task {calls}")
            if plain is not None and rep % 2 == 0:
                plain.throughput(args.tasks)
        if args.cprofile:
            profile_run(router, args.tasks, args.cprofile)
    finally:
        router.close()
        if plain is not None:
            plain.close()

    names = sorted({k for row in per_rep for k in row}, key=lambda k: -statistics.median(r.get(k, 0) for r in per_rep))
    print(f"\nRouter CPU per task in the scheduler thread (us), {args.tasks} no-op tasks, {args.reps} reps")
    print(f"load average (1 min) at start / end: {load_start} / {load_average()}")
    print(f"{'':44s} {'median':>8s}  {'min':>8s}  {'max':>8s}")
    for name in names:
        values = [r.get(name, 0.0) for r in per_rep]
        print(f"{name:44s} {statistics.median(values):8.1f}  {min(values):8.1f}  {max(values):8.1f}")
    if plain is not None:
        for name, key in (("scheduler thread total", "scheduler_cpu_us"), ("submitting thread", "submit_cpu_us")):
            values = [e[key] for e in plain.throughput_extra]
            low, mid, high = min(values), statistics.median(values), max(values)
            print(f"{'plain Dask: ' + name:44s} {mid:8.1f}  {low:8.1f}  {high:8.1f}")
        rates = {m.mode: statistics.median(m.rates) for m in (router, plain)}
        print(f"throughput (median tasks/s): router {rates['router']:.0f}, plain {rates['plain']:.0f}")


if __name__ == "__main__":
    main()
