"""Submission coalescing: 5,000 single ``submit`` calls through the router with and without coalescing
(``altlas_dask.client.coalesce``), the same as one ``map``, and plain Dask single submits; plus the one-task round
trip of each single-submit mode. Same machine, one run, alternating repetitions.

With ``--ray PYTHON`` (an interpreter with Ray, made by ``make bench-peers`` in ``.venv-ray``) Ray's single
``.remote`` calls join the same alternation (bench/submission_ray.py, a child process started before timing).

Run: ``.venv/bin/python bench/submission.py [--tasks 5000] [--reps 3] [--roundtrips 100] [--ray PYTHON]``.
Writes the ``submission`` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import subprocess
import time

from common import (
    BENCH_DIR,
    bench_config,
    command,
    load_average,
    machine,
    machine_line,
    pct,
    quiet,
    table,
    write_section,
)
from overhead import GPU_OPTIONS, N_GPUS, WARMUP_TASKS, noop


class RayChild:
    """Ray in its own interpreter (bench/submission_ray.py), driven line by line."""

    def __init__(self, python: str, gpus: int, slots: int) -> None:
        self.proc = subprocess.Popen(
            [python, str(BENCH_DIR / "submission_ray.py"), str(gpus), str(slots)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for line in self.proc.stdout:
            if line.strip() == "READY":
                return
        raise RuntimeError(f"Ray child exited ({self.proc.wait()}) before READY")

    def ask(self, command: str) -> float:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:  # Ray's own log lines come here too
            if line.startswith("RESULT "):
                return float(line.split()[1])
        raise RuntimeError(f"Ray child exited ({self.proc.wait()}) during {command!r}")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


#: Upper bound of the random pause before each round-trip sample: longer than a Dask client's 10 ms batching
#: window, so every sample meets a random phase of it.
PHASE_JITTER_S = 0.012

def submission_benchmark(n_tasks: int, reps: int, roundtrips: int, ray_python: str | None = None) -> str:
    """5,000 single submits with and without coalescing (altlas_dask.client.coalesce), one ``map``, and plain Dask."""
    import distributed

    from altlas_dask.ops.launcher import start_cluster

    info, load_start, t_start = machine(), load_average(), time.perf_counter()
    router = start_cluster(bench_config(), simulate=N_GPUS)
    plain = start_cluster(bench_config(), simulate=N_GPUS, router=False)
    coalescing = router.client()
    single = router.client(coalesce_ms=None)
    dask_client = distributed.Client(plain.cluster)
    modes = {
        "router, single submits, coalesced": lambda i: coalescing.submit(noop, i, pure=False, gpu_options=GPU_OPTIONS),
        "router, single submits, not coalesced": lambda i: single.submit(noop, i, pure=False, gpu_options=GPU_OPTIONS),
        "router, one map": None,
        "plain Dask, single submits": lambda i: dask_client.submit(noop, i, pure=False, resources={"GPU": 1}),
    }
    slots = bench_config().gpu.multi_gpu.max_concurrent_tasks_per_gpu
    ray = RayChild(ray_python, N_GPUS, slots) if ray_python else None
    if ray is not None:
        modes["Ray, single `.remote` calls"] = None  # driven in its own process (RayChild)
    clients = {name: (dask_client if name.startswith("plain") else coalescing) for name in modes}
    clients["router, single submits, not coalesced"] = single
    rates: dict[str, list[float]] = {name: [] for name in modes}
    rts: dict[str, list[float]] = {name: [] for name in modes if "single" in name}
    updates0 = coalescing._submissions.updates
    try:
        for submit in modes.values():  # warm-up
            if submit is not None:
                distributed.wait([submit(i) for i in range(WARMUP_TASKS)])
        for rep in range(reps):
            order = list(modes) if rep % 2 == 0 else list(reversed(modes))
            for name in order:
                submit, client = modes[name], clients[name]
                if ray is not None and name.startswith("Ray"):
                    rates[name].append(ray.ask(f"run {n_tasks}"))
                    print(f"rep {rep + 1} {name}: {rates[name][-1]:.0f} tasks/s", flush=True)
                    continue
                while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)):
                    time.sleep(0.05)
                gc.collect()
                start = time.perf_counter()
                if submit is None:
                    futures = coalescing.map(noop, range(n_tasks), pure=False, gpu_options=GPU_OPTIONS)
                else:
                    futures = [submit(i) for i in range(n_tasks)]
                distributed.wait(futures)
                rates[name].append(n_tasks / (time.perf_counter() - start))
                del futures
                print(f"rep {rep + 1} {name}: {rates[name][-1]:.0f} tasks/s", flush=True)
        pauses = random.Random(0)
        for i in range(roundtrips):
            for name in rts if i % 2 == 0 else reversed(list(rts)):
                time.sleep(pauses.uniform(0, PHASE_JITTER_S))  # see PHASE_JITTER_S
                if name.startswith("Ray"):
                    rts[name].append(ray.ask("rt"))
                    continue
                t0 = time.perf_counter()
                modes[name](i).result()
                rts[name].append((time.perf_counter() - t0) * 1e3)
        updates = coalescing._submissions.updates - updates0
    finally:
        for client in (coalescing, single, dask_client):
            client.close()
        if ray is not None:
            ray.close()
        router.close()
        plain.close()
    sent = WARMUP_TASKS + reps * n_tasks + roundtrips // 2 + roundtrips % 2
    rows = [
        [
            name,
            f"{statistics.median(rates[name]):.0f}",
            ", ".join(f"{x:.0f}" for x in rates[name]),
            f"{pct(rts[name], 50):.2f} / {pct(rts[name], 99):.2f}" if name in rts else "",
        ]
        for name in modes
    ]
    return "\n".join(
        [
            "## Submission coalescing (`bench/submission.py`)",
            "",
            f"Command: `{command('submission.py')}`  ",
            f"Machine: {machine_line(info)}  ",
            f"Load average (1 min) at start / end: {load_start} / {load_average()}; wall time "
            f"{time.perf_counter() - t_start:.0f} s.",
            "",
            f"{n_tasks:,} no-op tasks on {N_GPUS} simulated GPUs, median of {reps} alternating repetitions; time from "
            "the first `submit` to all futures done. *Coalesced*: `altlas_dask.Client` (default `coalesce_ms=0`): the "
            "`submit` calls made before the client's event loop next runs reach the scheduler as one `update-graph` "
            f"(here {updates:,} updates for about {sent:,} submissions); *not coalesced*: `Client(coalesce_ms=None)`, "
            "one update per `submit` (the behaviour before). Round trip = one `submit` + `result()`, "
            f"{roundtrips // 2} samples per mode, interleaved, each after a random pause of 0-"
            f"{PHASE_JITTER_S * 1e3:g} ms (a Dask client batches its messages in 10 ms windows; without the pause, "
            "clients sampled in turn lock into fixed phases of their windows, and the same mode measured a p50 of "
            "8 or 12 ms from one run to the next). "
            + (
                f"Ray: `ray.init(num_gpus={N_GPUS})` in a child process, a no-op with `num_gpus=1/slots` (as many at "
                "once per GPU as the router's slots) and `max_calls=0`, workers started before timing; its time "
                "is measured inside that process."
                if ray is not None
                else "No Ray row: pass `--ray .venv-ray/bin/python` (made by `make bench-peers`)."
            ),
            "",
            table(["mode", "tasks/s (median)", "repetitions", "round trip p50 / p99 ms"], rows),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--roundtrips", type=int, default=100, help="samples, shared by the three modes")
    parser.add_argument("--ray", default=None, help="a Python with Ray (make bench-peers makes .venv-ray)")
    args = parser.parse_args()
    quiet()
    report = submission_benchmark(args.tasks, args.reps, args.roundtrips, args.ray)
    print("\n" + report)
    write_section("submission", report)


if __name__ == "__main__":
    main()
