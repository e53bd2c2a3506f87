"""What "no record lost" costs: the accounting journal on vs off, interleaved on one cluster.

The router appends every accounting write (each finished task's record and usage increment) to a journal
file with one ``write(2)`` on the scheduler's event loop, before Dask tells the client (issue 22 item 5,
docs/design.md "No record lost"). This script starts the 4-GPU router cluster of ``bench/overhead.py``
(its ``ModeCluster``: no-op GPU tasks), and alternates rounds with the journal on and off (the store's
``journal`` detached between rounds; the order flips every round) on the same warm cluster. It reports
per mode the median throughput (tasks/s) and the scheduler thread's CPU per task, their ratios, and
the per-write cost of the store alone (``record_task`` + ``add_usage``, journal on vs off).

Run: ``PYTHONPATH=. .venv/bin/python bench/durability.py [--tasks 2000] [--rounds 5] [--write-results]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import command, load_average, machine, machine_line, quiet, table, write_section
from overhead import ModeCluster

from altlas_dask.accounting.store import AccountingStore

MODES = ("journal", "no journal")


def store_write_us(journal: bool, n: int = 20_000) -> float:
    """CPU microseconds (this thread's: ``write(2)`` included, other processes' load not) of one finished task's
    writes, a record and a usage increment, as the scheduler's event loop pays them."""
    folder = tempfile.mkdtemp(prefix="altlas-bench-")
    store = AccountingStore(Path(folder) / "acct.sqlite", flush_interval=0.05, journal=journal)
    row = {"key": "k", "user": "ana", "gpu": 0, "strategy": "earliest_finish", "status": "completed", "finished": 1.0}
    try:
        start = time.thread_time()
        for i in range(n):
            store.record_task({**row, "key": f"k{i}"})
            store.add_usage("ana", "2026-12-07", tasks=1, gpu_seconds=0.01)
        return (time.thread_time() - start) / n * 1e6
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write-results", action="store_true", help="replace the durability section of RESULTS.md")
    args = parser.parse_args()
    quiet()
    load_before = load_average()
    mc = ModeCluster("router")
    store = mc.plugin.store
    journal = store.journal
    assert journal is not None, "the bench database must be a file"
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    cpu_us: dict[str, list[float]] = {m: [] for m in MODES}
    try:
        for r in range(args.rounds):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                store.journal = journal if mode == "journal" else None
                rates[mode].append(mc.throughput(args.tasks))
                cpu_us[mode].append(mc.throughput_extra[-1]["scheduler_cpu_us"])
                print(f"round {r} {mode:>10}: {rates[mode][-1]:7.0f} tasks/s, {cpu_us[mode][-1]:6.1f} us CPU/task")
    finally:
        store.journal = journal
        mc.close()
    writes = {m: statistics.median(store_write_us(m == "journal") for _ in range(3)) for m in MODES}
    load_after = load_average()
    med = {m: statistics.median(rates[m]) for m in MODES}
    cpu = {m: statistics.median(cpu_us[m]) for m in MODES}
    rows = [
        [
            m,
            f"{med[m]:.0f}",
            f"{min(rates[m]):.0f}-{max(rates[m]):.0f}",
            f"{cpu[m]:.1f}",
            f"{min(cpu_us[m]):.1f}-{max(cpu_us[m]):.1f}",
            f"{writes[m]:.1f}",
        ]
        for m in MODES
    ]
    body = "\n".join(
        [
            "## Durability: the accounting journal's cost (issue 22 item 5)",
            "",
            f"`{command('durability.py')}` (with `PYTHONPATH=.`)",
            "",
            machine_line(machine())
            + f"; load average {load_before} before, {load_after} after (a shared machine: other work ran beside).",
            "",
            f"{args.rounds} rounds of {args.tasks} no-op GPU tasks per mode on one warm 4-GPU router cluster, the",
            "modes interleaved (order flipped each round); medians and min-max over rounds. The last column",
            "is the store alone: the thread CPU of one finished task's writes (record + usage), median of 3 x 20,000.",
            "",
            table(
                [
                    "mode",
                    "tasks/s (median)",
                    "tasks/s (min-max)",
                    "scheduler CPU us/task",
                    "CPU (min-max)",
                    "store writes us/task",
                ],
                rows,
            ),
            "",
            f"Throughput ratio journal / no journal: **{med['journal'] / med['no journal']:.3f}**; scheduler CPU per "
            f"task ratio: **{cpu['journal'] / cpu['no journal']:.3f}**; store writes: "
            f"+{writes['journal'] - writes['no journal']:.1f} us per task.",
        ]
    )
    print(body)
    if args.write_results:
        write_section("durability", body)


if __name__ == "__main__":
    main()
