"""Dynamic batching of the ``generate`` workload, isolated: one simulated GPU with batching on and one with it off,
in the same run, samples interleaved. (1) sequential single requests (nothing to batch: the cost of waiting
``max_wait_ms``), (2) bursts of 8 requests submitted together (one batch of 8 vs 8 one-by-one generations).

Run: ``.venv/bin/python bench/batching.py [--samples 40] [--bursts 5]``. Writes the ``batching`` section of
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import bench_config, command, load_average, machine, machine_line, pct, quiet, table, write_section

BURST = 8
CHARS = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--bursts", type=int, default=5)
    args = parser.parse_args()
    quiet()
    import altlas_dask
    from altlas_dask.model import generate
    from altlas_dask.ops.launcher import start_cluster

    info, load_start, start = machine(), load_average(), time.perf_counter()
    modes = {"batching on": "true", "batching off": "false"}
    clusters = {
        m: start_cluster(bench_config(f"serving.batching.generate.enabled={v}"), simulate=1) for m, v in modes.items()
    }
    clients = {m: altlas_dask.Client(c.scheduler_address, set_as_default=False) for m, c in clusters.items()}
    single: dict[str, list[float]] = {m: [] for m in modes}
    burst: dict[str, list[float]] = {m: [] for m in modes}
    sizes: dict[str, set[int]] = {m: set() for m in modes}
    try:
        for client in clients.values():
            client.gather(client.map(generate, ["warm"] * BURST, [CHARS] * BURST, pure=False))
        for i in range(args.samples):
            for m in modes if i % 2 == 0 else reversed(list(modes)):
                t0 = time.perf_counter()
                clients[m].submit(generate, "The ", CHARS, 0.7, i, pure=False).result()
                single[m].append((time.perf_counter() - t0) * 1000)
        for i in range(args.bursts):
            for m in modes if i % 2 == 0 else reversed(list(modes)):
                t0 = time.perf_counter()
                futures = clients[m].map(
                    generate, ["The "] * BURST, [CHARS] * BURST, [0.7] * BURST, range(BURST), pure=False
                )
                results = clients[m].gather(futures)
                burst[m].append((time.perf_counter() - t0) * 1000)
                sizes[m] |= {r.get("batch_size", 1) for r in results}
    finally:
        for client in clients.values():
            client.close()
        for cluster in clusters.values():
            cluster.close()
    rows = [
        [
            m,
            f"{statistics.median(single[m]):.1f} / {pct(single[m], 90):.1f}",
            f"{statistics.median(burst[m]):.1f}",
            f"{statistics.median(burst[m]) / BURST:.1f}",
            ", ".join(map(str, sorted(sizes[m]))),
        ]
        for m in modes
    ]
    report = "\n".join(
        [
            "## Dynamic batching, isolated (`bench/batching.py`)",
            "",
            f"Command: `{command('batching.py')}`  ",
            f"Machine: {machine_line(info)}  ",
            f"Load average (1 min) at start / end: {load_start} / {load_average()}; wall time "
            f"{time.perf_counter() - start:.0f} s.",
            "",
            f"One simulated GPU per mode (both clusters up, samples interleaved), `generate` of {CHARS} characters "
            f"(temperature 0.7) through `altlas_dask.Client`; {args.samples} sequential single requests per mode "
            f"(submit + result), then {args.bursts} bursts of {BURST} requests submitted together (one `map`, time "
            "to all results). `serving.batching.generate`: max_batch_size 8, max_wait_ms 2.",
            "",
            table(
                ["mode", "single request p50 / p90 ms", f"burst of {BURST}: ms", "ms per request", "batch sizes seen"],
                rows,
            ),
        ]
    )
    print("\n" + report)
    write_section("batching", report)


if __name__ == "__main__":
    main()
