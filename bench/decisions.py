"""A digest of every decision the core makes on the shipped traces, per strategy: run it before and after a
change to the core that must not change decisions, and compare (bench/RESULTS.md "Scale" records both).

Each shipped trace (altlas_dask/simulation/traces) is replayed on bench/strategies.py's pool (2 x A100 80GB +
2 x T4 16GB) with every built-in strategy; the digest hashes, per task, its final status, GPU, attempts and
start/end times (virtual, to the microsecond), so any different placement shows.

Run: ``.venv/bin/python bench/decisions.py [--trace NAME ...] [--json FILE]`` (prints ``trace strategy digest``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from altlas_dask.config import load_config
from altlas_dask.simulation import scenarios
from altlas_dask.simulation.engine import replay
from altlas_dask.simulation.trace import read_trace

TRACES = Path(scenarios.__file__).parent / "traces"
STRATEGIES = ("earliest_finish", "least_loaded", "round_robin", "memory_optimized", "random", "hybrid",
              "task_specific", "single_gpu")  # fmt: skip


def digests(names: list[str] | None = None) -> dict[str, str]:
    pool = "simulation.gpus=" + json.dumps(list(scenarios.HETEROGENEOUS_POOL))
    config = load_config(overrides=["accounting.database=:memory:", pool], environ={})
    out = {}
    for path in sorted(TRACES.glob("*.jsonl")):
        if names and path.stem not in names:
            continue
        lines = read_trace(path)
        for strategy in STRATEGIES:
            result = replay(config, lines, strategy=strategy)
            h = hashlib.sha256()
            for o in result.outcomes:
                h.update(f"{o.task.id} {o.status} {o.gpu} {o.attempts} {_us(o.started)} {_us(o.done)}\n".encode())
            out[f"{path.stem} {strategy}"] = h.hexdigest()[:16]
    return out


def _us(t: float | None) -> str:
    return "-" if t is None else f"{t:.6f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="also write the digests to this file")
    parser.add_argument("--trace", action="append", help="only this shipped trace (repeatable; default: all)")
    args = parser.parse_args()
    found = digests(args.trace)
    for name, digest in found.items():
        print(name, digest)
    if args.json:
        args.json.write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
