"""What identity costs: the router with ``security.identity: tls`` (mutual TLS on every comm, each task bound
to its certificate's user) against open mode (plain TCP), same 4 simulated GPUs, same no-op tasks.

Both clusters stay up for the whole run and the repetitions alternate (open/tls, tls/open, ...) so other
processes' load hits both. (a) throughput of N single ``submit`` calls, median of the repetitions; (b) one-task
round trip (submit + result), samples interleaved. Certificates come from ``altlas_dask.ops.certs`` in a temp dir.

Run: ``.venv/bin/python bench/identity.py [--reps 3] [--tasks 2000] [--roundtrips 100]``; writes the
"identity" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import bench_config, command, load_average, machine, machine_line, pct, quiet, table, write_section

N_GPUS = 4
WARMUP = 200
GPU_OPTIONS = {"task_type": "noop"}


def noop(x: Any = None) -> Any:
    return x


class Mode:
    """One cluster: open mode (tcp, declared user) or tls (mutual TLS, the certificate's user)."""

    def __init__(self, mode: str, certs: Path) -> None:
        from altlas_dask.client.gpu_client import Client
        from altlas_dask.ops.certs import client_security
        from altlas_dask.ops.launcher import start_cluster

        overrides: list[str] = []
        if mode == "tls":
            overrides = [
                "security.identity=tls",
                f"security.ca_file={certs / 'ca.pem'}",
                f"security.node_cert={certs / 'node-1.pem'}",
                f"security.node_key={certs / 'node-1-key.pem'}",
            ]
        self.mode = mode
        self.cluster = start_cluster(bench_config(*overrides), simulate=N_GPUS)
        address = self.cluster.scheduler_address
        if mode == "tls":
            self.client = Client(address, security=client_security(certs, "alice"), set_as_default=False)
        else:
            self.client = Client(address, gpu_defaults={"user": "alice"}, set_as_default=False)
        self.rates: list[float] = []
        self.roundtrips_ms: list[float] = []
        self.client.gather([self.submit(i) for i in range(WARMUP)])

    def submit(self, i: int):
        return self.client.submit(noop, i, pure=False, gpu_options=GPU_OPTIONS)

    def throughput(self, n: int) -> float:
        start = time.perf_counter()
        futures = [self.submit(i) for i in range(n)]
        self.client.gather(futures)
        rate = n / (time.perf_counter() - start)
        assert all(f.status == "finished" for f in futures), "some tasks failed"
        self.rates.append(rate)
        return rate

    def roundtrip(self, i: int) -> None:
        t0 = time.perf_counter()
        self.submit(i).result()
        self.roundtrips_ms.append((time.perf_counter() - t0) * 1e3)

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--roundtrips", type=int, default=100, help="samples per mode")
    args = parser.parse_args()
    quiet()
    from altlas_dask.ops.certs import init_ca, issue

    info, load_start, t0 = machine(), load_average(), time.perf_counter()
    certs = Path(tempfile.mkdtemp(prefix="altlas-certs-"))
    init_ca(certs)
    issue(certs, "node-1", "node")
    issue(certs, "alice")
    modes: dict[str, Mode] = {}
    try:
        for mode in ("open", "tls"):
            modes[mode] = Mode(mode, certs)
        for rep in range(args.reps):
            for mode in ("open", "tls") if rep % 2 == 0 else ("tls", "open"):
                print(f"rep {rep + 1} {mode}: {modes[mode].throughput(args.tasks):.0f} tasks/s", flush=True)
        for i in range(args.roundtrips):
            for mode in ("open", "tls") if i % 2 == 0 else ("tls", "open"):
                modes[mode].roundtrip(i)
    finally:
        for m in modes.values():
            m.close()
    rate = {m: statistics.median(modes[m].rates) for m in modes}
    rt = {m: modes[m].roundtrips_ms for m in modes}
    lines = [
        "## Identity: mutual TLS on vs off (`bench/identity.py`)",
        "",
        f"Command: `{command('identity.py')}`  ",
        f"Machine: {machine_line(info)}  ",
        f"Load average (1 min) at start / end: {load_start} / {load_average()}; wall time "
        f"{time.perf_counter() - t0:.0f} s. Router ON in both; `open` = `security.identity: none` over TCP with a "
        "declared user, `tls` = mutual TLS on every comm (scheduler, workers, client) with the user taken from "
        "the client certificate and written into each task's options.",
        "",
        table(
            [
                "mode",
                f"tasks/s ({args.tasks:,} submits, median of {args.reps})",
                "repetitions",
                "round trip median ms",
                "round trip p99 ms",
            ],
            [
                [
                    m,
                    f"{rate[m]:.0f}",
                    ", ".join(f"{x:.0f}" for x in modes[m].rates),
                    f"{pct(rt[m], 50):.2f}",
                    f"{pct(rt[m], 99):.2f}",
                ]
                for m in ("open", "tls")
            ],
        ),  # fmt: skip
        "",
        table(
            ["ratio", "value"],
            [
                ["throughput tls / open", f"{rate['tls'] / rate['open']:.3f}"],
                ["round trip median tls / open", f"{pct(rt['tls'], 50) / pct(rt['open'], 50):.3f}"],
            ],
        ),
        "",
        "Spread of the repetitions (max / min): "
        + ", ".join(f"{m} {max(modes[m].rates) / min(modes[m].rates):.2f}" for m in ("open", "tls"))
        + ". A ratio inside that spread means no difference this machine can resolve.",
    ]
    text = "\n".join(lines)
    print(text)
    write_section("identity", text)


if __name__ == "__main__":
    main()
