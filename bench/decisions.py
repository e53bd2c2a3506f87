"""A digest of every decision the core makes on the shipped traces, per strategy: run it before and after a
change to the core that must not change decisions, and compare (bench/RESULTS.md "Scale" records both).

Each shipped trace (altlas_dask/simulation/traces) is replayed on bench/strategies.py's pool (2 x A100 80GB +
2 x T4 16GB) with every built-in strategy; the digest hashes, per task, its final status, GPU, attempts and
start/end times (virtual, to the microsecond), so any different placement shows.

Run: ``.venv/bin/python bench/decisions.py [--trace NAME ...] [--json FILE] [--check FILE]`` (prints ``trace
strategy digest``). ``--check bench/decisions.json`` compares with the digests pinned there (main's, with each
change since explained in bench/RESULTS.md "Scale") and exits 1 naming every pair that differs.
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
    parser.add_argument("--check", type=Path, help="compare with the digests in this file; exit 1 if any differ")
    args = parser.parse_args()
    found = digests(args.trace)
    for name, digest in found.items():
        print(name, digest)
    if args.json:
        args.json.write_text(json.dumps(found, indent=1) + "\n")
    if args.check:
        pinned = json.loads(args.check.read_text())
        differ = [f"{name}: {pinned.get(name, 'not pinned')} -> {digest}" for name, digest in found.items()
                  if pinned.get(name) != digest]  # fmt: skip
        print("\n".join(differ) if differ else f"all {len(found)} digests as pinned in {args.check}")
        raise SystemExit(1 if differ else 0)


if __name__ == "__main__":
    main()
