"""Scheduler memory: flat over a long soak, and per task in flight close to plain Dask.

Two measurements, router ON (altlas Client, ``gpu_options``) and OFF (plain Dask, ``resources={"GPU": 1}``),
on the same 4-GPU simulated pool, the scheduler in this process (LocalCluster):

* **soak**: ``--tasks`` tiny tasks in waves of ``--wave``; after each wave the futures are released, the
  scheduler forgets them, ``gc.collect()`` runs and the process's RSS is read. After the warm-up waves
  the RSS must stay within 10 % (the router keeps ``accounting.recent_records`` final records in memory,
  older ones in SQLite).
* **in flight**: ``--in-flight`` tasks waiting on one gate task (the router tracks them all); the Python
  memory they add (``tracemalloc``, every thread: scheduler, client and the router), per task, router minus
  plain Dask, must stay under 1 KB.

Each mode runs in its own process (interleaved, ``--reps`` times), so one mode's heap growth does not
hide the other's.

Run: ``.venv/bin/python bench/memory.py [--tasks 200000] [--wave 10000] [--in-flight 20000]``.
Writes the ``memory`` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
import tracemalloc
import types
from pathlib import Path
from typing import Any

import psutil
from common import command, load_average, machine, machine_line, quiet, table, verdict, write_section
from overhead import ModeCluster

WARMUP_WAVES = 3
FLAT_TOLERANCE = 0.10
PER_TASK_BUDGET_KB = 1.0


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def gate(event_name: str) -> int:
    from distributed import Event

    Event(event_name).wait()
    return 0


def follow(gate_value: int, i: int) -> int:
    return i + gate_value


def submit_many(mc: ModeCluster, fn, args: list[tuple]) -> list:
    if mc.mode == "router":
        return [mc.client.submit(fn, *a, pure=False, gpu_options={"user": "soak"}) for a in args]
    return [mc.client.submit(fn, *a, pure=False, resources={"GPU": 1}) for a in args]


def retained_mb(root: Any, shared: tuple[Any, ...] = ()) -> float:
    """Memory reachable from ``root`` (MB), not counting ``shared`` objects (config, strategies, ...)."""
    seen = {id(x) for x in shared}
    stack, total = [root], 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type | types.ModuleType | types.FunctionType):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total / 2**20


def router_state_mb(mc: ModeCluster) -> float | None:
    """What the router keeps: its scheduling core's state."""
    if mc.plugin is None:
        return None
    core = mc.plugin.core
    shared = (core.policy, core.registry, core.book.quotas, core.event_handlers, core.state.timer)
    return retained_mb(core, shared)  # LocalCluster: the scheduler is in this process (and idle after settle)


def soak(mc: ModeCluster, tasks: int, wave: int) -> tuple[list[float], list[float | None]]:
    import distributed

    series, router = [], []
    for start in range(0, tasks, wave):
        futures = submit_many(mc, follow, [(0, i) for i in range(start, min(start + wave, tasks))])
        distributed.wait(futures)
        del futures
        mc.settle(timeout=120)
        series.append(rss_mb())
        router.append(router_state_mb(mc))
    return series, router


def in_flight(mc: ModeCluster, count: int) -> tuple[float, list[tuple[str, float]]]:
    """Python memory (KB) per task held waiting on a gate, and the top allocating files."""
    import distributed

    name = f"gate-{mc.mode}-{time.monotonic()}"
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    base = tracemalloc.get_traced_memory()[0]
    (gated,) = submit_many(mc, gate, [(name,)])
    futures = submit_many(mc, follow, [(gated, i) for i in range(count)])
    deadline = time.monotonic() + 900
    while mc.client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) < count + 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the scheduler never saw every task: {mc.client.run_on_scheduler(_states)}")
        time.sleep(0.1)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - base
    stats = tracemalloc.take_snapshot().compare_to(before, "filename")
    tracemalloc.stop()
    top = [("/".join(Path(s.traceback[0].filename).parts[-2:]), s.size_diff / count) for s in stats[:8]]
    distributed.Event(name, client=mc.client).set()
    distributed.wait(futures)
    del futures, gated
    mc.settle(timeout=120)
    return grown / 1024 / count, top


def _states(dask_scheduler) -> dict[str, int]:
    out: dict[str, int] = {}
    for ts in dask_scheduler.tasks.values():
        out[ts.state] = out.get(ts.state, 0) + 1
    return out


def run_mode(mode: str, tasks: int, wave: int, count: int) -> dict[str, Any]:
    mc = ModeCluster(mode)
    try:
        per_task, top = in_flight(mc, count)
        series, router = soak(mc, tasks, wave)
    finally:
        mc.close()
    return {"per_task_kb": per_task, "top": top, "series": series, "router": router}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--wave", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=2, help="processes per mode, interleaved")
    parser.add_argument("--mode", choices=("router", "plain"), help=argparse.SUPPRESS)  # one child process
    args = parser.parse_args(argv)
    quiet()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.tasks, args.wave, args.in_flight)))
        return
    info, started = machine(), time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {"router": [], "plain": []}
    for _ in range(args.reps):
        for mode in runs:
            child = [
                sys.executable,
                __file__,
                "--mode",
                mode,
                "--tasks",
                str(args.tasks),
                "--wave",
                str(args.wave),
                "--in-flight",
                str(args.in_flight),
            ]
            done = subprocess.run(child, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
            out = done.stdout
            run = json.loads(out.strip().splitlines()[-1])
            runs[mode].append(run)
            print(
                mode,
                f"{run['per_task_kb']:.2f} KB/task in flight; RSS MB per wave:",
                [round(x) for x in run["series"]],
                flush=True,
            )
    results: dict[str, dict[str, Any]] = {}
    for mode, mode_runs in runs.items():
        growths = []
        for run in mode_runs:
            after = run["series"][WARMUP_WAVES:] or run["series"]
            growths.append((max(after) - after[0]) / after[0])
        results[mode] = {
            "per_task_kb": statistics.median(r["per_task_kb"] for r in mode_runs),
            "spread": (min(r["per_task_kb"] for r in mode_runs), max(r["per_task_kb"] for r in mode_runs)),
            "series": mode_runs[-1]["series"],
            "growth": max(growths),
            "top": mode_runs[-1]["top"],
            "router": mode_runs[-1].get("router") or [],
        }
    router, plain = results["router"], results["plain"]
    extra_kb = router["per_task_kb"] - plain["per_task_kb"]
    rows = [
        (
            mode,
            f"{r['per_task_kb']:.2f} ({r['spread'][0]:.2f}-{r['spread'][1]:.2f})",
            f"{r['series'][min(WARMUP_WAVES, len(r['series']) - 1)]:.0f}",
            f"{r['series'][-1]:.0f}",
            f"{r['growth']:+.1%}",
            f"{statistics.median(r['series']):.0f}",
        )
        for mode, r in results.items()
    ]
    flat_ok = router["growth"] <= FLAT_TOLERANCE
    state = [x for x in router["router"] if x is not None][WARMUP_WAVES:] or [0.0]
    router_growth = (max(state) - state[0]) / state[0] if state[0] else 0.0
    router_flat_ok = router_growth <= FLAT_TOLERANCE
    body = f"""## Scheduler memory (soak and in flight)

`{command("memory.py", argv if argv is not None else sys.argv[1:])}` ({time.perf_counter() - started:.0f} s;
{machine_line(info)}; load average {load_average()}). RSS of the process that runs the scheduler (LocalCluster),
after `gc.collect()`, {args.tasks:,} tiny tasks in waves of {args.wave:,}; in flight: {args.in_flight:,} tasks
waiting on one gate task.

{
        table(
            (
                "mode",
                "KB per task in flight (median, range)",
                "RSS after warm-up (MB)",
                "RSS at the end (MB)",
                "largest growth after warm-up",
                "median RSS (MB)",
            ),
            rows,
        )
    }

Where the in-flight memory goes, router ON (KB per task, by file): {
        ", ".join(f"`{f}` {kb:.2f}" for f, kb in router["top"][:6])
    }.

- The router's own state (its scheduling core, measured by walking what it references) per wave, MB:
  {", ".join(f"{x:.2f}" for x in router["router"])}: flat after warm-up
  {verdict(router_flat_ok)} ({router_growth:+.1%}).
- Process RSS flat after warm-up (router ON, within {FLAT_TOLERANCE:.0%}): {router["growth"]:+.1%}
  {verdict(flat_ok)}; plain Dask's own grows {plain["growth"]:+.1%} in the same soak (the scheduler's and
  the client's per-task bookkeeping and the allocator, in this one process), so compare the two.
- Per task in flight, router minus plain Dask (within {PER_TASK_BUDGET_KB:g} KB): {extra_kb:+.2f} KB
  {verdict(extra_kb <= PER_TASK_BUDGET_KB)}
- Before issue 10 the router kept up to 100,000 finished tasks' explanations in memory (153 MB over 35,000
  tasks against 43 MB for plain Dask); it now keeps `accounting.recent_records` (1,000) and reads older
  records from SQLite.
"""
    write_section("memory", body)
    print(body)


if __name__ == "__main__":
    main()
