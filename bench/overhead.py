"""What the GPU router costs: throughput, round trip and decision time.

(a) 5,000 no-op tasks on 4 simulated GPUs: router ON (``altlas_dask.Client.submit`` with
    ``gpu_options``) vs plain Dask (``router=False``, ``distributed.Client.submit`` with
    ``resources={"GPU": 1}``). Both clusters stay up for the whole run (each scheduler on its own
    event-loop thread in this process) and the repetitions alternate between them (plain/router,
    router/plain, ...) so drift and other processes' load hit both. Median of the repetitions,
    plus the scheduler thread's CPU time per task (insensitive to preemption).
(b) One-task round trip (submit + result, sequential) after a warm-up, in the same clusters,
    samples interleaved plain/router; plus the scheduler thread's CPU time per round trip.
(c) Decision time with 64 simulated GPUs and 10,000 queued tasks, in-process (no workers):
    the pure ``strategies.choose()`` per strategy, then the router's own code: a real
    ``GpuRouter`` whose ``slots`` hold 64 ``GpuSlot``s, driven through ``update_graph``
    (10,000 tasks), Dask's transitions and ``_dispatch`` by a stand-in scheduler object, in a
    steady state where each completed task frees one slot. ``_decide`` times come from the
    router's own ``decision_seconds``.

Run: ``.venv/bin/python bench/overhead.py [--reps 3] [--tasks 5000] [--roundtrips 200] [--profile]``.
``--profile`` adds one router-ON run with cProfile on the scheduler's event-loop thread and on
the submitting thread and prints the top functions (not written to RESULTS.md).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import random
import statistics
import threading
import time
from collections import deque
from typing import Any

from common import (
    BENCH_DIR,
    bench_config,
    command,
    load_average,
    machine,
    machine_line,
    pct,
    quiet,
    scheduler_cpu_clock,
    table,
    verdict,
    write_section,
)

N_GPUS = 4
WARMUP_TASKS = 300
WARMUP_ROUNDTRIPS = 20
ROUNDTRIP_SAMPLES = 200  # per mode
IDLE_PROBE_S = 2.0
GPU_OPTIONS = {"task_type": "noop"}
BIG_POOL = 64
QUEUED = 10_000
N_USERS = 64  # spread so no user reaches the default priority_requests quota (256 priority 4-5 outstanding)
STEADY_STEPS = 2_000
STEADY_BUDGET_S = 3.0  # per strategy: each _dispatch may take tens of ms
CHOOSE_STRATEGIES = (
    "single_gpu",
    "round_robin",
    "least_loaded",
    "memory_optimized",
    "task_specific",
    "random",
    "hybrid",
)
TARGET_RATIO, TARGET_RT_MS, TARGET_DECISION_MS = 0.95, 0.3, 1.0


def noop(x: Any = None) -> Any:
    return x


# -- (a) and (b): real clusters ----------------------------------------------------------------


class ModeCluster:
    """A 4-GPU cluster with the router ON (altlas Client, gpu_options) or OFF (plain Client, resources)."""

    def __init__(self, mode: str) -> None:
        import distributed

        from altlas_dask.ops.launcher import start_cluster

        self.mode = mode
        self.cluster = start_cluster(bench_config(), simulate=N_GPUS, router=mode == "router")
        if mode == "router":
            self.client = self.cluster.client(coalesce_ms=None)  # one update per submit, as plain Dask sends
            self.submit = lambda i: self.client.submit(noop, i, pure=False, gpu_options=GPU_OPTIONS)
            self.plugin = self.cluster.cluster.scheduler.plugins.get("altlas-router")
        else:
            self.client = distributed.Client(self.cluster.cluster)
            self.submit = lambda i: self.client.submit(noop, i, pure=False, resources={"GPU": 1})
            self.plugin = None
        self.sched_cpu = scheduler_cpu_clock(self.cluster.cluster)
        self.rates: list[float] = []
        self.throughput_extra: list[dict[str, Any]] = []
        self.roundtrips_ms: list[float] = []
        self.roundtrip_cpu_s = 0.0
        self.roundtrip_wall_s = 0.0
        distributed.wait([self.submit(i) for i in range(WARMUP_TASKS)])
        for i in range(WARMUP_ROUNDTRIPS):
            self.submit(i).result()
        self.settle()
        # the event-loop thread also burns CPU when idle (heartbeats, ticks, dashboard, the router's poller);
        # that share is subtracted so the per-task numbers do not grow with the run's duration
        c0, t0 = self.sched_cpu(), time.perf_counter()
        time.sleep(IDLE_PROBE_S)
        self.idle_cpu_share = (self.sched_cpu() - c0) / (time.perf_counter() - t0)

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until the scheduler has forgotten every task (releases are asynchronous)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0:
                return
            time.sleep(0.05)

    def throughput(self, n_tasks: int, profile: bool = False) -> float:
        import distributed

        self.settle()
        gc.collect()
        if self.plugin is not None:
            self.plugin.core.decision_seconds.clear()
            held0 = self.plugin.core.counters.get("held", 0)
        profilers = _start_profiles(self.cluster) if profile else None
        cpu0, main0 = self.sched_cpu(), time.thread_time()
        start = time.perf_counter()
        futures = [self.submit(i) for i in range(n_tasks)]
        submitted = time.perf_counter()
        main_cpu = time.thread_time() - main0
        distributed.wait(futures)
        end = time.perf_counter()
        scheduler_cpu = self.sched_cpu() - cpu0
        if profilers:
            _stop_profiles(self.cluster, profilers)
        assert all(f.status == "finished" for f in futures), "some tasks failed"
        del futures
        extra: dict[str, Any] = {
            "submit_s": submitted - start,
            "scheduler_cpu_us": max(scheduler_cpu - self.idle_cpu_share * (end - start), 0.0) / n_tasks * 1e6,
            "submit_cpu_us": main_cpu / n_tasks * 1e6,
        }
        if self.plugin is not None:
            extra["held"] = self.plugin.core.counters.get("held", 0) - held0
            extra["decide_mean_us"] = statistics.fmean(self.plugin.core.decision_seconds or [0.0]) * 1e6
        rate = n_tasks / (end - start)
        if not profile:
            self.rates.append(rate)
            self.throughput_extra.append(extra)
        return rate

    def roundtrip(self, i: int) -> None:
        c0 = self.sched_cpu()
        t0 = time.perf_counter()
        self.submit(i).result()
        wall = time.perf_counter() - t0
        self.roundtrips_ms.append(wall * 1e3)
        self.roundtrip_cpu_s += self.sched_cpu() - c0
        self.roundtrip_wall_s += wall

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


def _start_profiles(cluster) -> tuple[cProfile.Profile, cProfile.Profile]:
    """cProfile on the scheduler's event-loop thread (LocalCluster runs it in this process) and here."""
    scheduler_prof, client_prof = cProfile.Profile(), cProfile.Profile()
    started = threading.Event()

    def enable():
        scheduler_prof.enable()
        started.set()

    cluster.cluster.scheduler.loop.add_callback(enable)
    started.wait(10)
    client_prof.enable()
    return scheduler_prof, client_prof


def _stop_profiles(cluster, profilers) -> None:
    scheduler_prof, client_prof = profilers
    client_prof.disable()
    stopped = threading.Event()

    def disable():
        scheduler_prof.disable()
        stopped.set()

    cluster.cluster.scheduler.loop.add_callback(disable)
    stopped.wait(10)
    ours = r"altlas_dask|scheduler_plugins|quotas|accounting|scheduling"
    for name, prof in (("scheduler event-loop thread", scheduler_prof), ("submitting (main) thread", client_prof)):
        for order, restrict in (("tottime", ()), ("cumulative", ()), ("cumulative", (ours, 40))):
            out = io.StringIO()
            stats = pstats.Stats(prof, stream=out)
            stats.sort_stats(order).print_stats(*(restrict or (30,)))
            what = "altlas code only, " if restrict else ""
            print(f"\n===== cProfile, {name}, {what}by {order} =====")
            print(out.getvalue())


# -- (c): decision time in-process -----------------------------------------------------------------

MODELS = (  # name, memory MB, compute capability, relative speed, power limit W
    ("A100 80GB", 81920, "8.0", 1.0, 400.0),
    ("A100 40GB", 40960, "8.0", 0.8, 400.0),
    ("V100 32GB", 32768, "7.0", 0.45, 300.0),
    ("T4 16GB", 16384, "7.5", 0.25, 70.0),
    ("L4 24GB", 24576, "8.9", 0.4, 72.0),
)
TASK_TYPES = ("inference", "embedding", "image_segmentation", "text_generation")
MEMORY_CHOICES = (0, 256, 1024, 4096, 12000, 30000, 70000)
MEMORY_WEIGHTS = (10, 20, 30, 20, 12, 6, 2)
UTILIZATIONS = (0.0, 10.0, 30.0, 50.0, 70.0, 90.0, 97.0, 100.0)  # > 95 (utilization_threshold): busy per NVML


def synthetic_pool(n: int, rng: random.Random, max_concurrent: int, clean: bool = False):
    """``n`` heterogeneous GPUs (five models, all above the compute-capability floor, as the inventories
    admit them), varied memory use and in-flight counts; unless ``clean``: some draining, one failed,
    two hot, and a quarter reported > 95% utilized by their heartbeat."""
    from altlas_dask.gpus.state import GpuState, classify_health

    gpus = []
    for i in range(n):
        name, total, cc, speed, power = MODELS[i % len(MODELS)]
        status = "active"
        util = rng.choice(UTILIZATIONS[:6] if clean or i == 0 else UTILIZATIONS)  # GPU 0: single_gpu's primary
        temp = 35.0 + 0.4 * util
        if not clean:
            status = "maintenance" if i in (7, 40) else "error" if i == 23 else "active"
            temp += 20.0 if i in (11, 50) else 0.0
        error_rate = rng.choice((0.0, 0.0, 0.0, 0.01, 0.08))
        used_share = rng.uniform(0.0, 0.05 if total > 80000 else 0.5)
        gpus.append(
            GpuState(
                id=i,
                uuid=f"GPU-bench-{i:04d}",
                name=f"Simulated {name}",
                compute_capability=cc,
                status=status,
                memory_total_mb=total,
                memory_used_mb=int(total * used_share),
                utilization_gpu=util,
                utilization_memory=round(100 * used_share, 1),
                temperature_c=temp,
                power_usage_w=round(power * (0.15 + 0.85 * util / 100), 1),
                power_limit_w=power,
                performance_index=speed,
                error_rate=error_rate,
                active_requests=rng.randint(0, max_concurrent),
                health_status=classify_health(status=status, temperature_c=temp, error_rate=error_rate),
                simulated=True,
                worker=f"tcp://10.0.{i // 200}.{i % 200 + 1}:40000",
            )
        )
    return gpus


def synthetic_options(n: int, strategy: str, rng: random.Random) -> list[dict[str, Any]]:
    """``n`` gpu_options dicts (wire form): mixed memory, priority, task type and user."""
    from altlas_dask.options import GpuOptions

    out = []
    for _ in range(n):
        opts: dict[str, Any] = {
            "strategy": strategy,
            "memory_mb": rng.choices(MEMORY_CHOICES, MEMORY_WEIGHTS)[0],
            "priority": rng.randint(1, 5),
            "task_type": rng.choice(TASK_TYPES),
            "user": f"user{rng.randrange(N_USERS):02d}",
        }
        if rng.random() < 0.05:
            opts["min_compute_capability"] = 8.0
        out.append(GpuOptions.parse(opts).wire())
    return out


def bench_choose(gpus, options: list[dict[str, Any]], config) -> tuple[list[float], list[float]]:
    """Wall and thread-CPU seconds per ``choose()`` over a fixed snapshot (round_robin's cursor advances)."""
    from altlas_dask.options import GpuOptions
    from altlas_dask.scheduling.strategies import RoutingContext, TaskRequest, choose

    policy = config.routing()
    rng = random.Random(1)
    perf = {g.id: g.performance_index for g in gpus}
    snapshot = tuple(gpus)
    requests = [TaskRequest.from_options(GpuOptions.parse(o), key=f"t-{i}") for i, o in enumerate(options)]
    last = None
    wall, cpu = [], []
    clock, cpu_clock = time.perf_counter, time.thread_time
    for request in requests:
        c0, t0 = cpu_clock(), clock()
        decision = choose(snapshot, request, RoutingContext(policy, last, rng, perf))
        t1, c1 = clock(), cpu_clock()
        wall.append(t1 - t0)
        cpu.append(c1 - c0)
        if decision.placed and decision.strategy == "round_robin":
            last = decision.gpu
    return wall, cpu


class _Task:
    """The slice of ``distributed.scheduler.TaskState`` the router touches."""

    __slots__ = (
        "key",
        "state",
        "annotations",
        "priority",
        "worker_restrictions",
        "loose_restrictions",
        "resource_restrictions",
        "dependencies",
        "retries",
        "processing_on",
    )

    def __init__(self, key: str, annotations: dict[str, Any], order: int) -> None:
        self.key, self.state, self.annotations = key, "released", annotations
        self.priority = (0, 1, order)
        self.worker_restrictions = self.resource_restrictions = self.processing_on = None
        self.loose_restrictions, self.dependencies, self.retries = False, (), 0


class _Loop:
    def add_callback(self, fn, *args, **kwargs) -> None:
        pass  # the bench calls _dispatch itself, once per freed slot


class StandInScheduler:
    """Just enough of ``Scheduler`` to drive ``GpuRouter`` like Dask does: tasks, transitions, loop."""

    def __init__(self, router) -> None:
        self.router = router
        self.tasks: dict[str, _Task] = {}
        self.workers: dict[str, Any] = {}
        self.handlers: dict[str, Any] = {}
        self.stream_handlers: dict[str, Any] = {}
        self.loop = _Loop()
        self.started: list[str] = []  # keys that went to processing

    def _move(self, key: str, finish: str, **kwargs: Any) -> None:
        ts = self.tasks[key]
        start, ts.state = ts.state, finish
        self.router.transition(key, start, finish, **kwargs)
        if finish == "processing":
            self.started.append(key)

    def transitions(self, recommendations: dict[str, str], stimulus_id: str) -> None:
        for key, finish in recommendations.items():
            self._move(key, finish)

    def transition(self, key: str, finish: str, stimulus_id: str, **kwargs: Any) -> dict:
        self._move(key, finish)
        return {}


def bench_router(gpus, options: list[dict[str, Any]], config, seed: int) -> dict[str, Any]:
    """Drive the scheduling core the router runs: every task submitted, then one tick per completed task."""
    from altlas_dask.scheduling import events as ev
    from altlas_dask.scheduling.actions import Place
    from altlas_dask.scheduling.core import SchedulingCore

    rng = random.Random(seed)
    core = SchedulingCore.from_config(config, timer=time.perf_counter)
    core.state.decision_seconds = deque()  # the core's own timer, unbounded for the bench
    cpu_decide: list[float] = []
    decide = core.dispatch.decide

    def cpu_timed_decide(task, *args):
        c0 = time.thread_time()
        decision = decide(task, *args)
        cpu_decide.append(time.thread_time() - c0)
        return decision

    core.dispatch.decide = cpu_timed_decide
    max_concurrent = config.routing().max_concurrent_tasks_per_gpu
    now = time.time()  # one instant: no GPU goes silent, no deadline passes
    workers = {}
    for g in gpus:
        core.handle(ev.GpuJoined(g.worker, g.with_(active_requests=0), now))
        slot = core.gpus.slot_of(g.worker)
        workers[slot.gpu_id] = g.worker
        for j in range(rng.randint(0, max_concurrent // 2)):  # work that started before the bench
            slot.assigned[f"background-{g.id}-{j}"] = rng.choice((0, 512, 2048))
        core.gpus.changed(slot)
        for task_type in TASK_TYPES:  # observed durations, as after a warm-up
            core.estimates.learn(slot.gpu_id, task_type, rng.uniform(0.05, 0.5) / g.performance_index)

    def places(actions) -> list[Place]:
        return [a for a in actions if isinstance(a, Place)]

    gc.collect()
    running: list[str] = []
    t0 = time.perf_counter()
    for i, opts in enumerate(options):
        running += [a.key for a in places(core.handle(ev.Submitted(f"task-{i}", opts, now)))]
    update_graph_s = time.perf_counter() - t0
    decide_ug, cpu_ug = list(core.decision_seconds), list(cpu_decide)
    placed_at_submit = len(running)
    running += [a.key for a in places(core.handle(ev.Tick(now)))]
    for key in running:
        core.handle(ev.Started(key, now))

    core.decision_seconds.clear()
    cpu_decide.clear()
    dispatch_wall: list[float] = []
    dispatch_cpu: list[float] = []
    per_dispatch: list[int] = []
    deadline = time.perf_counter() + STEADY_BUDGET_S
    for _ in range(STEADY_STEPS):
        if not running or time.perf_counter() > deadline:
            break
        i = rng.randrange(len(running))
        running[i], running[-1] = running[-1], running[i]
        key = running.pop()
        core.handle(ev.Finished(key, now, workers[core.tasks[key].gpu], 0.1))
        before = len(cpu_decide)
        c0, t0 = time.thread_time(), time.perf_counter()
        started = places(core.handle(ev.Tick(now)))
        t1, c1 = time.perf_counter(), time.thread_time()
        dispatch_wall.append(t1 - t0)
        dispatch_cpu.append(c1 - c0)
        per_dispatch.append(len(cpu_decide) - before)
        for action in started:
            core.handle(ev.Started(action.key, now))
            running.append(action.key)
    return {
        "update_graph_per_task_us": update_graph_s / len(options) * 1e6,
        "placed_at_submit": placed_at_submit,
        "decide_ug": decide_ug,
        "cpu_ug": cpu_ug,
        "decide_dispatch": list(core.decision_seconds),
        "cpu_dispatch": list(cpu_decide),
        "dispatch_wall": dispatch_wall,
        "dispatch_cpu": dispatch_cpu,
        "decisions_per_dispatch": statistics.fmean(per_dispatch) if per_dispatch else 0.0,
        "max_decisions_per_dispatch": max(per_dispatch, default=0),
    }


def _us(values: list[float], q: float) -> str:
    return f"{pct(values, q) * 1e6:.0f}"


def decision_benchmarks(config) -> tuple[list[list[Any]], list[list[Any]], dict[str, Any]]:
    max_concurrent = config.routing().max_concurrent_tasks_per_gpu
    pool = synthetic_pool(BIG_POOL, random.Random(64), max_concurrent)
    clean_pool = synthetic_pool(BIG_POOL, random.Random(64), max_concurrent, clean=True)
    choose_rows, router_rows, raw = [], [], {}
    cases = [(s, pool, s) for s in CHOOSE_STRATEGIES] + [("least_loaded", clean_pool, "least_loaded, clean pool")]
    for strategy, gpus, label in cases:
        options = synthetic_options(QUEUED, strategy, random.Random(10_000))
        gc.collect()
        wall: list[float] = []
        if gpus is pool:
            wall, cpu = bench_choose(gpus, options, config)
            choose_rows.append([strategy, _us(wall, 50), _us(wall, 99), _us(cpu, 50), _us(cpu, 99)])
        r = bench_router(gpus, options, config, seed=7)
        decide_all = r["decide_ug"] + r["decide_dispatch"]
        cpu_all = r["cpu_ug"] + r["cpu_dispatch"]
        raw[label] = {"choose": wall, "decide": decide_all, "decide_cpu": cpu_all}
        router_rows.append(
            [
                label,
                f"{_us(r['decide_ug'], 50)} / {_us(r['decide_ug'], 99)}",
                f"{_us(r['decide_dispatch'], 50)} / {_us(r['decide_dispatch'], 99)}",
                f"{pct(decide_all, 99) * 1e3:.3f}",
                f"{pct(cpu_all, 99) * 1e3:.3f}",
                f"{verdict(pct(decide_all, 99) * 1e3 <= TARGET_DECISION_MS)} / "
                f"{verdict(pct(cpu_all, 99) * 1e3 <= TARGET_DECISION_MS)}",
                f"{len(r['dispatch_wall'])}",
                f"{pct(r['dispatch_wall'], 50) * 1e3:.2f} / {pct(r['dispatch_wall'], 99) * 1e3:.2f}",
                f"{statistics.fmean(r['dispatch_cpu']) * 1e3:.2f}" if r["dispatch_cpu"] else "-",
                f"{r['decisions_per_dispatch']:.1f} (max {r['max_decisions_per_dispatch']})",
                f"{r['update_graph_per_task_us']:.0f}",
            ]
        )
        print(
            f"(c) {label}: decide p99 {pct(decide_all, 99) * 1e3:.3f} ms wall, {pct(cpu_all, 99) * 1e3:.3f} ms CPU; "
            f"{r['decisions_per_dispatch']:.1f} decisions per dispatch",
            flush=True,
        )
    return choose_rows, router_rows, raw


# -- report --------------------------------------------------------------------------------------


def plot(modes: dict[str, ModeCluster], raw: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    labels = {"plain": "plain Dask\nresources={'GPU': 1}", "router": "altlas router\ngpu_options"}
    names = [m for m in ("plain", "router") if m in modes]
    ax = axes[0]
    for x, mode in enumerate(names):
        rates = modes[mode].rates
        ax.bar(x, statistics.median(rates), color=("#999999", "#1f77b4")[x], alpha=0.8)
        ax.scatter([x] * len(rates), rates, color="black", zorder=3, s=14)
        cpu = statistics.median(e["scheduler_cpu_us"] for e in modes[mode].throughput_extra)
        ax.text(x, statistics.median(rates) / 2, f"scheduler CPU\n{cpu:.0f} µs/task", ha="center", fontsize=9)
    ax.set_xticks(range(len(names)), [labels[m] for m in names])
    ax.set_ylabel("tasks / s (median bar, repetitions as dots)")
    ax.set_title(f"(a) throughput, no-op tasks, {N_GPUS} GPUs")
    ax = axes[1]
    if names:
        ax.boxplot([modes[m].roundtrips_ms for m in names], whis=(1, 99), showfliers=False)
        ax.set_xticks(range(1, len(names) + 1), [labels[m] for m in names])
    ax.set_ylabel("ms (box: quartiles, whiskers: p1-p99)")
    ax.set_title("(b) one-task round trip (interleaved samples)")
    ax = axes[2]
    names = list(raw)
    xs = range(len(names))
    series = (
        ("choose", "choose() wall", "#2ca02c"),
        ("decide", "router _decide wall", "#1f77b4"),
        ("decide_cpu", "router _decide CPU", "#ff7f0e"),
    )
    for off, (what, label, color) in enumerate(series):
        p50 = [pct(raw[n][what], 50) * 1e3 for n in names]
        p99 = [pct(raw[n][what], 99) * 1e3 for n in names]
        pos = [x + (off - 1) * 0.27 for x in xs]
        ax.bar(pos, p99, width=0.26, color=color, alpha=0.35, label=f"{label} p99")
        ax.bar(pos, p50, width=0.26, color=color, label=f"{label} p50")
    ax.axhline(TARGET_DECISION_MS, color="red", linestyle="--", linewidth=1, label="target p99 1 ms")
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.set_ylabel("ms per decision")
    ax.set_yscale("log")
    ax.set_title(f"(c) decision time, {BIG_POOL} GPUs, {QUEUED:,} queued")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--roundtrips", type=int, default=ROUNDTRIP_SAMPLES, help="samples per mode")
    parser.add_argument("--profile", action="store_true", help="also profile one router-ON run (printed only)")
    parser.add_argument("--skip-clusters", action="store_true", help="only (c), the in-process part")
    args = parser.parse_args()
    quiet()
    info = machine()
    load_start = load_average()
    t_start = time.perf_counter()
    config = bench_config()

    modes: dict[str, ModeCluster] = {}
    if not args.skip_clusters:
        try:
            for mode in ("plain", "router"):
                modes[mode] = ModeCluster(mode)
            for rep in range(args.reps):
                for mode in ("plain", "router") if rep % 2 == 0 else ("router", "plain"):
                    m = modes[mode]
                    rate = m.throughput(args.tasks)
                    print(f"rep {rep + 1} {mode:6s}: {rate:7.0f} tasks/s, {m.throughput_extra[-1]}", flush=True)
            for m in modes.values():
                m.settle()
            for i in range(args.roundtrips):  # interleaved, so both modes see the same machine load
                for mode in ("plain", "router") if i % 2 == 0 else ("router", "plain"):
                    modes[mode].roundtrip(i)
            if args.profile:
                modes["router"].throughput(args.tasks, profile=True)
        finally:
            for m in modes.values():
                m.close()

    choose_rows, router_rows, raw = decision_benchmarks(config)
    elapsed = time.perf_counter() - t_start

    lines = [
        "## Router overhead (`bench/overhead.py`)",
        "",
        f"Command: `{command('overhead.py')}`  ",
        f"Machine: {machine_line(info)}  ",
        f"Load average (1 min) at start / end: {load_start} / {load_average()}; wall time of the script: "
        f"{elapsed:.0f} s. Other processes share these 2 cores: wall-clock numbers carry their noise, the CPU-time "
        "columns much less.",
        "",
    ]
    if modes:
        p, r = modes["plain"], modes["router"]
        rate = {m: statistics.median(modes[m].rates) for m in modes}
        ratio = rate["router"] / rate["plain"]

        def med_extra(m: ModeCluster, key: str) -> float:
            return statistics.median(e[key] for e in m.throughput_extra)

        cpu_ratio = med_extra(p, "scheduler_cpu_us") / med_extra(r, "scheduler_cpu_us")
        rts = {m: modes[m].roundtrips_ms for m in modes}
        paired = [b - a for a, b in zip(p.roundtrips_ms, r.roundtrips_ms, strict=True)]
        d50 = pct(rts["router"], 50) - pct(rts["plain"], 50)
        d99 = pct(rts["router"], 99) - pct(rts["plain"], 99)
        rt_cpu = {
            m: (c.roundtrip_cpu_s - c.idle_cpu_share * c.roundtrip_wall_s) / max(len(c.roundtrips_ms), 1) * 1e3
            for m, c in modes.items()
        }
        lines += [
            f"### (a) Throughput: {args.tasks:,} no-op tasks (`pure=False`, one `submit` each), {N_GPUS} simulated "
            f"GPUs (threads/worker = max_concurrent_tasks_per_gpu = {config.routing().max_concurrent_tasks_per_gpu}), "
            f"median of {args.reps}",
            "",
            "Both clusters are up for the whole run (separate schedulers, each on its own event-loop thread in this "
            "process); the repetitions alternate between them (plain, router, router, plain, ...). Time from the "
            "first `submit` to all futures done, client-side submission included. Scheduler CPU = CPU time of that "
            "cluster's scheduler event-loop thread (which also runs this client's comms) per task, after subtracting "
            f"what the thread burns when idle (measured for {IDLE_PROBE_S:g} s per cluster: plain "
            f"{p.idle_cpu_share:.0%}, router {r.idle_cpu_share:.0%} of a core) times the run's duration; submit CPU = "
            "this thread's CPU per `submit` call.",
            "",
            table(
                [
                    "mode",
                    "tasks/s (median)",
                    "repetitions (tasks/s)",
                    "submit loop s",
                    "scheduler CPU µs/task",
                    "submit CPU µs/task",
                ],
                [
                    [
                        m,
                        f"{rate[m]:.0f}",
                        ", ".join(f"{x:.0f}" for x in modes[m].rates),
                        f"{med_extra(modes[m], 'submit_s'):.2f}",
                        f"{med_extra(modes[m], 'scheduler_cpu_us'):.0f}",
                        f"{med_extra(modes[m], 'submit_cpu_us'):.0f}",
                    ]
                    for m in ("plain", "router")
                ],
            ),  # fmt: skip
            "",
            f"Router ON: tasks held in `no-worker` per run {[e.get('held') for e in r.throughput_extra]}, mean "
            f"`_decide` {statistics.fmean(e.get('decide_mean_us', 0.0) for e in r.throughput_extra):.0f} µs (the "
            "router's `decision_seconds`).",
            "",
            f"### (b) One-task round trip (submit + result, sequential, {len(rts['router'])} samples per mode, "
            f"interleaved plain/router, after {WARMUP_ROUNDTRIPS} warm-up per cluster)",
            "",
            table(
                ["mode", "median ms", "p99 ms", "mean ms", "scheduler CPU ms per round trip (minus idle)"],
                [
                    [
                        m,
                        f"{pct(rts[m], 50):.2f}",
                        f"{pct(rts[m], 99):.2f}",
                        f"{statistics.fmean(rts[m]):.2f}",
                        f"{rt_cpu[m]:.3f}",
                    ]
                    for m in ("plain", "router")
                ],
            ),  # fmt: skip
            "",
            "### Ratios and targets",
            "",
            table(
                ["metric", "measured", "target", "verdict"],
                [
                    [
                        "throughput router / plain (wall clock)",
                        f"{ratio:.3f}",
                        f">= {TARGET_RATIO}",
                        verdict(ratio >= TARGET_RATIO),
                    ],
                    [
                        "scheduler CPU per task (minus idle), plain / router",
                        f"{cpu_ratio:.3f}",
                        "(if the scheduler thread is the bottleneck)",
                        "",
                    ],
                    [
                        "round trip median, router - plain",
                        f"{d50:+.2f} ms",
                        f"<= {TARGET_RT_MS} ms",
                        verdict(d50 <= TARGET_RT_MS),
                    ],
                    ["round trip, median of paired differences", f"{statistics.median(paired):+.2f} ms", "", ""],
                    ["round trip p99, router - plain", f"{d99:+.2f} ms", "(reported)", ""],
                    [
                        "scheduler CPU per round trip (minus idle), router - plain",
                        f"{rt_cpu['router'] - rt_cpu['plain']:+.3f} ms",
                        "",
                        "",
                    ],
                ],
            ),  # fmt: skip
            "",
        ]
    lines += [
        f"### (c) Routing decision time, {BIG_POOL} heterogeneous simulated GPUs, {QUEUED:,} queued tasks (in-process)",
        "",
        f"Pool: {BIG_POOL} `GpuState`s cycling five models (A100 80GB/40GB, V100 32GB, T4 16GB, L4 24GB, all above "
        "the compute-capability floor as the inventories admit them), varied memory use, utilization and in-flight "
        "counts; 2 draining, 1 failed, 2 hot (>= max_temperature) and about a quarter reported > 95% utilized "
        "(utilization_threshold) by their heartbeat. The *clean pool* row has none of those. Requests: "
        f"memory 0-70 GB, priority 1-5, four task types, {N_USERS} users, 5% with a compute-capability floor of 8.0. "
        "Wall = `perf_counter` (includes preemption by other processes), CPU = `thread_time` of this thread.",
        "",
        f"`choose()` alone (pure function, fixed snapshot, {QUEUED:,} requests):",
        "",
        table(["strategy", "wall p50 µs", "wall p99 µs", "CPU p50 µs", "CPU p99 µs"], choose_rows),
        "",
        f"The router's own code: `GpuRouter(config)` with {BIG_POOL} `GpuSlot`s (some background work), observed "
        f"durations and its accounting store; `update_graph` with {QUEUED:,} tasks, then Dask's follow-up "
        "transitions (placed -> processing, held -> no-worker), then steady state: a running task completes "
        "(`transition(key, 'processing', 'memory', ...)`) and `_dispatch()` runs, as the scheduler would, for up to "
        f"{STEADY_STEPS:,} completions or {STEADY_BUDGET_S:.0f} s per strategy. A stand-in object plays the "
        "scheduler (tasks, transitions). `_decide` wall times are the router's own `decision_seconds`.",
        "",
        table(
            [
                "strategy",
                "_decide in update_graph p50/p99 µs",
                "_decide in _dispatch p50/p99 µs",
                "_decide p99 ms wall",
                "_decide p99 ms CPU",
                "target p99 <= 1 ms",
                "_dispatch calls",
                "_dispatch per freed slot p50/p99 ms",
                "_dispatch mean CPU ms",
                "_decide calls per _dispatch",
                "update_graph µs per task",
            ],
            router_rows,
        ),
        "",
        "![overhead](overhead.png)",
    ]
    report = "\n".join(lines)
    print("\n" + report)
    plot(modes, raw, BENCH_DIR / "overhead.png")
    write_section("overhead", report)
    print(f"\nwrote {BENCH_DIR / 'RESULTS.md'} and {BENCH_DIR / 'overhead.png'} in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
