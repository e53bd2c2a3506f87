"""Scale: the scheduling core with 64 to 4,096 GPUs and 10k to 1M queued tasks, in CPU time.

Core cells (one fresh process per cell, so its max RSS is its own): a pool of ``G`` GPUs (four models, equal
shares: 80, 40, 24 and 16 GB) joins a core built from cluster.yaml's routing policy (its default strategy,
quotas raised so that 8 users may queue a million tasks); tasks fill every GPU, then ``B`` more wait in the
queue (8 users, priorities 1-3, three sizes: 512 MB, 4 GB, 20 GB). Then the steady state, ``--rounds``
times: the oldest running task finishes, a tick places the next held task (one decision that places it and
usually one that finds the pool full), the placed task starts, one GPU reports its heartbeat and one new
task joins the queue, so the backlog stays at ``B``. Decision p50/p99: the core's own timer around each
decision (``time.thread_time``, CPU time, 1 us resolution); events/s: steady-state events per CPU second of
the process; fill: CPU seconds to submit the tasks; RSS: the process's maximum.

Replay cells: a flood of ``N`` tasks (the same mix, at t=0) replayed on a modelled pool of ``G`` GPUs
(altlas_dask.simulation.engine, every decision the core's): tasks per CPU second of the whole replay.

Run: ``.venv/bin/python bench/scale.py [--gpus 64,256,1024,4096] [--backlogs 10000,100000,1000000]
[--rounds 2000] [--replay-gpus 64,256,1024] [--save FILE] [--section FILE_BEFORE]``; ``--section`` writes the
"scale" section of RESULTS.md from this run (after) and a run saved before the change.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from common import BENCH_DIR, command, load_average, machine, machine_line, table, verdict, write_section

MODELS = (
    ("Simulated A100 80GB", 81920, "8.0", 2000.0),
    ("Simulated A100 40GB", 40960, "8.0", 1600.0),
    ("Simulated L4 24GB", 24576, "8.9", 1000.0),
    ("Simulated T4 16GB", 16384, "7.5", 500.0),
)
SIZES = ((512, "embedding", 20.0), (4096, "image_segmentation", 100.0), (20480, "text_generation", 400.0))
USERS = tuple(f"user{i}" for i in range(8))
QUOTAS = [
    "quotas.defaults.concurrent_requests=100000",
    "quotas.defaults.requests_per_minute=1000000000",
    "quotas.defaults.requests_per_day=1000000000",
]
EPOCH = 1_000_000.0
GOAL_P99_MS, GOAL_REPLAY_PER_MIN = 1.0, 100_000


def config(gpus: int):
    from altlas_dask.config import load_config

    pool = []
    for name, memory, cc, speed in MODELS:
        left = gpus // len(MODELS)
        while left:  # entries of at most 256 (the cap before issue 24), so the same pool loads on both sides
            count = min(left, 256)
            pool.append({"name": name, "memory_mb": memory, "compute_capability": cc, "speed_gflops": speed,
                         "count": count})  # fmt: skip
            left -= count
    overrides = ["accounting.database=:memory:", "simulation.gpus=" + json.dumps(pool), *QUOTAS]
    return load_config(overrides=overrides, environ={})


def options(rng: random.Random) -> dict[str, Any]:
    memory, task_type, _ = rng.choice(SIZES)
    return {"user": rng.choice(USERS), "priority": rng.randint(1, 3), "memory_mb": memory, "task_type": task_type}


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def core_cell(gpus: int, backlog: int, rounds: int) -> dict[str, Any]:
    from altlas_dask.gpus.state import GpuState
    from altlas_dask.scheduling import events as ev
    from altlas_dask.scheduling.actions import Place
    from altlas_dask.scheduling.core import SchedulingCore

    cfg = config(gpus)
    core = SchedulingCore.from_config(cfg, timer=time.thread_time)
    specs = cfg.simulation.expanded()
    states = [
        GpuState(i, f"GPU-{i}", s.name, s.compute_capability, "active", s.memory_mb, 0, 0.0, 0.0, 40.0, 50.0,
                 s.power_limit_w, simulated=True, speed_gflops=s.speed_gflops)
        for i, s in enumerate(specs)
    ]  # fmt: skip
    rng, now, events = random.Random(0), EPOCH, 0
    running: deque[str] = deque()
    for i, state in enumerate(states):
        core.handle(ev.GpuJoined(f"tcp://gpu-{i}", state, now))

    def feed(event) -> None:
        nonlocal events
        events += 1
        for action in core.handle(event):
            if isinstance(action, Place):
                running.append(action.key)
                events += 1
                core.handle(ev.Started(action.key, now))

    rss0, cpu0 = maxrss_mb(), time.process_time()
    n = 0
    while len(core.queue) < backlog:
        feed(ev.Submitted(f"t{n}", options(rng), now))
        n += 1
    fill_cpu, rss_filled = time.process_time() - cpu0, maxrss_mb()
    core.decision_seconds.clear()
    events, cpu0 = 0, time.process_time()
    for r in range(rounds):
        now += 0.001
        key = running.popleft()
        task = core.tasks.get(key)
        if task is not None:
            feed(ev.Finished(key, now, f"tcp://gpu-{task.gpu}", 0.5))
        feed(ev.Tick(now))
        g = r % gpus
        feed(ev.GpuReported(f"tcp://gpu-{g}", states[g], now))
        while len(core.queue) < backlog:
            feed(ev.Submitted(f"t{n}", options(rng), now))
            n += 1
    steady_cpu = time.process_time() - cpu0
    seconds = sorted(core.decision_seconds)
    return {
        "gpus": gpus,
        "backlog": backlog,
        "queued": len(core.queue),
        "fill_cpu_s": round(fill_cpu, 2),
        "decisions": len(seconds),
        "p50_us": round(seconds[len(seconds) // 2] * 1e6, 1) if seconds else None,
        "p99_us": round(seconds[int(len(seconds) * 0.99)] * 1e6, 1) if seconds else None,
        "events_per_cpu_s": round(events / steady_cpu) if steady_cpu else None,
        "rss_mb": round(maxrss_mb()),
        "kb_per_queued": round((rss_filled - rss0) * 1024 / backlog, 2),
    }


def flood(tasks: int) -> list:
    from altlas_dask.simulation.trace import TraceTask

    rng = random.Random(0)
    out = []
    for i in range(tasks):
        memory, task_type, work = rng.choice(SIZES)
        out.append(TraceTask(t=0.0, id=f"t{i}", user=rng.choice(USERS), priority=rng.randint(1, 3),
                             task_type=task_type, memory_mb=memory, work_gflop=work))  # fmt: skip
    return out


def replay_cell(gpus: int, tasks: int) -> dict[str, Any]:
    from altlas_dask.simulation.engine import replay

    cfg, lines = config(gpus), flood(tasks)
    cpu0 = time.process_time()
    result = replay(cfg, lines)
    cpu = time.process_time() - cpu0
    done = sum(o.status == "completed" for o in result.outcomes)
    return {"gpus": gpus, "tasks": tasks, "completed": done, "cpu_s": round(cpu, 1),
            "tasks_per_cpu_s": round(tasks / cpu), "rss_mb": round(maxrss_mb())}  # fmt: skip


def run_cell(*argv: str) -> dict[str, Any]:
    """One cell in a fresh process (its own max RSS)."""
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=False)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["load"] = load_average()
    print(json.dumps(row), flush=True)
    return row


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", type=ints, default=[64, 256, 1024, 4096])
    parser.add_argument("--backlogs", type=ints, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--replay-gpus", type=ints, default=[64, 256, 1024])
    parser.add_argument("--replay-tasks", type=int, default=0, help="default: 100 per GPU, 10k to 100k")
    parser.add_argument("--save", type=Path, help="write this run's rows to FILE (JSON)")
    parser.add_argument("--section", type=Path, help="write RESULTS.md's scale section: FILE (before) vs this run")
    parser.add_argument("--cell", nargs=2, type=int, metavar=("GPUS", "BACKLOG"), help=argparse.SUPPRESS)
    parser.add_argument("--replay", nargs=2, type=int, metavar=("GPUS", "TASKS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(core_cell(*args.cell, args.rounds)))
        return
    if args.replay:
        print(json.dumps(replay_cell(*args.replay)))
        return
    info, load_start = machine(), load_average()
    rows = {"core": [], "replay": [], "machine": machine_line(info), "load_start": load_start}
    for gpus in args.gpus:
        for backlog in args.backlogs:
            rows["core"].append(run_cell("--cell", str(gpus), str(backlog), "--rounds", str(args.rounds)))
    for gpus in args.replay_gpus:
        tasks = args.replay_tasks or min(max(100 * gpus, 10_000), 100_000)
        rows["replay"].append(run_cell("--replay", str(gpus), str(tasks)))
    rows["load_end"] = load_average()
    if args.save:
        args.save.write_text(json.dumps(rows, indent=1))
    if args.section:
        write_section("scale", section(json.loads(args.section.read_text()), rows, command("scale.py")))


def section(before: dict[str, Any], after: dict[str, Any], how: str) -> str:
    def find(run: dict[str, Any], kind: str, **key: int) -> dict[str, Any]:
        return next((r for r in run[kind] if all(r.get(k) == v for k, v in key.items())), {})

    def cell(row: dict[str, Any], name: str) -> str:
        return "-" if row.get(name) is None else str(row[name])

    def rows(kind: str, first: str, names: tuple[str, ...], *key: str) -> list[list[str]]:
        """One row per cell of this run: its two coordinates, then before / after for each of ``names``."""
        out = []
        for a in after[kind]:
            if "gpus" in a:
                b = find(before, kind, **{k: a[k] for k in key})
                out.append([f"{a['gpus']:,}", f"{a[first]:,}", *(f"{cell(b, n)} / {cell(a, n)}" for n in names)])
        return out

    core_rows = rows(
        "core", "backlog", ("p50_us", "p99_us", "events_per_cpu_s", "fill_cpu_s", "rss_mb", "kb_per_queued"),
        "gpus", "backlog",
    )  # fmt: skip
    replay_rows = rows("replay", "tasks", ("cpu_s", "tasks_per_cpu_s", "rss_mb"), "gpus")
    goal = find(after, "core", gpus=1024, backlog=1_000_000)
    replay_goal = find(after, "replay", gpus=1024)
    return "\n".join([
        "## Scale (issue 24)",
        "",
        f"Command: {how}",
        f"Machine (after): {after['machine']}; 1-minute load {after['load_start']} -> {after['load_end']};"
        f" before: {before['machine']}, load {before['load_start']} -> {before['load_end']}."
        " The machine is shared with other sessions: every figure is CPU time (thread/process), not wall time.",
        "",
        "Core, steady state with the backlog held at B (before / after; us = CPU microseconds per decision):",
        "",
        table(["GPUs", "queued B", "decision p50 us", "decision p99 us", "events per CPU s", "fill CPU s",
               "max RSS MB", "RSS KB per queued"], core_rows),  # fmt: skip
        "",
        "Replay of a flood (all tasks at t=0, default strategy; before / after):",
        "",
        table(["GPUs", "tasks", "CPU s", "tasks per CPU s", "max RSS MB"], replay_rows),
        "",
        f"Goals: decision p99 <= {GOAL_P99_MS:g} ms at 1,024 GPUs with 1M queued: {goal.get('p99_us')} us"
        f" {verdict(goal.get('p99_us') is not None and goal['p99_us'] <= GOAL_P99_MS * 1000)}; replay >="
        f" {GOAL_REPLAY_PER_MIN:,} tasks per CPU minute at 1,024 GPUs: {replay_goal.get('tasks_per_cpu_s', 0) * 60:,}"
        f" {verdict(replay_goal.get('tasks_per_cpu_s', 0) * 60 >= GOAL_REPLAY_PER_MIN)}.",
    ])  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH_DIR))
    main()
