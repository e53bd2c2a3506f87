"""Helpers shared by the benchmark scripts: config, machine info, statistics, RESULTS.md sections."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import re
import shlex
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
SECTION_ORDER = ("overhead", "scaling", "strategies", "fairness")
RESULTS_HEADER = """# altlas-dask benchmarks

Every number below is measured by the script named in its section; re-running a script replaces
only its own section (between its `name:start` / `name:end` HTML-comment markers).
The GPUs are simulated: one Dask worker process per virtual GPU, and a kernel of W GFLOP sleeps
W / speed seconds on its worker's device (kernels time-share the device), so multi-GPU scaling
is real wall-clock scaling even on a 2-core machine.
"""

if str(REPO_DIR) not in sys.path:  # scheduler_plugins is importable from the repository root
    sys.path.insert(0, str(REPO_DIR))


def quiet() -> None:
    """Keep the launcher's and Dask's INFO/WARNING chatter (also from worker processes) out of the tables."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")  # read by the spawned worker processes
    names = ("distributed", "altlas_dask", "scheduler_plugins", "tornado", "bokeh")
    for name in [*names, *(n for n in logging.root.manager.loggerDict if n.startswith(names))]:
        logging.getLogger(name).setLevel(logging.ERROR)


def bench_config(*overrides: str):
    """cluster.yaml plus ``overrides``, with the scheduler and dashboard on free local ports."""
    from altlas_dask.config import AltlasConfig, load_config

    base = ["cluster.scheduler_address=127.0.0.1:0", "cluster.dashboard_address=127.0.0.1:0"]
    if "accounting" in AltlasConfig.model_fields:  # a throw-away SQLite file, same code path as the default
        base.append(f"accounting.database={tempfile.mkdtemp(prefix='altlas-bench-')}/altlas.sqlite")
    return load_config(overrides=[*base, *overrides], environ={})


def own_cluster(prefix: str) -> tuple[str, list[str]]:
    """A fresh temp folder and the ``--set`` overrides of a benchmark's own cluster there: free local ports,
    its accounting database in that folder, and request quotas that never throttle the load."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    return tmp, [
        "cluster.scheduler_address=127.0.0.1:0",
        "cluster.dashboard_address=127.0.0.1:0",
        f"accounting.database={tmp}/altlas.sqlite",
        "quotas.defaults.requests_per_minute=100000000",
        "quotas.defaults.requests_per_day=100000000",
    ]


def pool_override(*models: dict[str, Any]) -> str:
    """``simulation.gpus=[...]`` for the given virtual GPU models (name, memory_mb, speed_gflops, count, ...)."""
    return "simulation.gpus=" + json.dumps(list(models))


def machine() -> dict[str, str]:
    import dask
    import distributed

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "cpu": cpu or "unknown",
        "python": platform.python_version(),
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "os": f"{platform.system()} {platform.release()}",
        "code": code_version(),
    }


def code_version() -> str:
    """The commit measured, and whether the router/library code had uncommitted changes."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=10).stdout

    try:
        rev = git("rev-parse", "--short", "HEAD").strip() or "unknown"
        dirty = git("status", "--porcelain", "--", "altlas_dask", "scheduler_plugins").strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}{' + uncommitted changes in altlas_dask/ or scheduler_plugins/' if dirty else ''}"


def command(script: str, argv: Sequence[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    return " ".join([".venv/bin/python", f"bench/{script}", *(shlex.quote(a) for a in argv)])


def machine_line(info: dict[str, str]) -> str:
    return (
        f"{info['date']}; {info['nproc']} cores ({info['cpu']}), {info['os']}, Python {info['python']}, "
        f"dask {info['dask']}, distributed {info['distributed']}; code {info.get('code', 'unknown')}"
    )


def load_average() -> str:
    """The 1-minute load average: other work on this machine shows up here (and as noise in the numbers)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def pct(values: Iterable[float], q: float) -> float:
    arr = np.asarray(list(values), dtype=float)
    return float(np.percentile(arr, q)) if arr.size else float("nan")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-markdown table (also readable as plain text)."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def write_section(name: str, body: str) -> None:
    """Replace (or add) the ``name`` section of bench/RESULTS.md, keeping the other sections."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = RESULTS.read_text() if RESULTS.exists() else ""
    pattern = re.compile(r"<!-- ([\w.-]+):start -->\n.*?\n<!-- \1:end -->", re.S)  # names with - and .
    sections = {m.group(1): m.group(0) for m in pattern.finditer(text) if m.group(1) != "name"}
    sections[name] = f"{start}\n{body.strip()}\n{end}"
    order = [n for n in SECTION_ORDER if n in sections] + sorted(n for n in sections if n not in SECTION_ORDER)
    RESULTS.write_text(RESULTS_HEADER + "\n" + "\n\n".join(sections[n] for n in order) + "\n")


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def scheduler_cpu_clock(cluster) -> Callable[[], float]:
    """A clock of the CPU seconds used by the scheduler's event-loop thread (a LocalCluster runs it in-process)."""
    found: list[int] = []
    ready = threading.Event()

    def record() -> None:
        found.append(threading.get_ident())
        ready.set()

    cluster.scheduler.loop.add_callback(record)
    ready.wait(10)
    clock_id = time.pthread_getcpuclockid(found[0])
    return lambda: time.clock_gettime(clock_id)
