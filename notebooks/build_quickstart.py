"""Write quickstart.ipynb from the cells below, run it, and keep its outputs (so it reads well on GitHub):
``.venv/bin/python notebooks/build_quickstart.py`` (``--no-execute``: sources only).

Edit the cells here, not the .ipynb. tests/test_notebook.py checks the committed sources match these cells
and executes the notebook headless itself.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

CELLS: list[tuple[str, str]] = [
    (
        "md",
        """# altlas-dask quickstart

GPU-aware scheduling on Dask: every worker owns one GPU, and the **GPU router** (a Dask scheduler plugin)
decides which GPU each task runs on, from the task's `gpu_options`.

This notebook needs no GPU: the launcher starts one worker process per GPU of the *simulated* pool described
in `cluster.yaml` (2x A100 80GB + 2x T4 16GB). Drop `simulate=4` to use the real GPUs where NVML sees some.""",
    ),
    (
        "md",
        """## 1. Start a cluster and connect

`start_cluster` starts the scheduler (with the router) and one worker per GPU; `cluster.client()` returns an
`altlas_dask.Client`, a `distributed.Client` that understands `gpu_options`. The overrides pick free local ports
so the notebook never clashes with a running cluster.""",
    ),
    (
        "code",
        """import time
from collections import Counter

from distributed import wait

from altlas_dask import GpuOptionsError, load_config, run_on_gpu, start_cluster

config = load_config(overrides=["cluster.scheduler_address=127.0.0.1:0", "cluster.dashboard_address=127.0.0.1:0"])
cluster = start_cluster(config, simulate=4)
client = cluster.client(gpu_defaults={"user": "admin"})  # open mode: a declared name; admins drain GPUs

# every worker reports its GPU with its heartbeat: wait (with a deadline) until the router has all four
deadline = time.monotonic() + 60
while len(client.gpus()) < len(cluster.gpus):
    assert time.monotonic() < deadline, "the GPUs did not report in time"
    time.sleep(0.1)

print("scheduler:", cluster.scheduler_address, "| simulated:", cluster.simulated)
print("dashboard:", cluster.dashboard_link)
cluster  # in a notebook: its GPUs and a link to the dashboard's GPU page""",
    ),
    (
        "md",
        """## 2. The GPUs, as the router sees them

`client.gpus()` is each GPU's last heartbeat plus the router's own accounting (tasks in flight, drain state).
`client.gpus_frame()` is the same as a pandas DataFrame, with each GPU's condition (healthy, warning,
critical, drained, error) and its reason; displaying the client shows them as a table with links to the
dashboard's GPU page (and to the console, when `ALTLAS_CONSOLE_URL` is set).""",
    ),
    (
        "code",
        """client.gpus_frame()[["name", "compute_capability", "status", "condition", "memory_total_mb", "running"]]""",
    ),
    (
        "code",
        """client""",
    ),
    (
        "md",
        """## 3. Submit work with `gpu_options`

`submit`/`map` take `gpu_options`: `strategy` (round_robin, least_loaded, memory_optimized, task_specific,
random, hybrid), `priority` (1-5, higher first), `memory_mb` (what the task will hold on the GPU),
`task_type`, `specific_gpu_id`, `timeout`, `retries`... `run_on_gpu(work_gflop, memory_mb)` is a modelled
kernel: it holds the memory and takes `work_gflop / speed` seconds of device time.""",
    ),
    (
        "code",
        """jobs = {
    "least_loaded": client.submit(
        run_on_gpu, 200.0, pure=False, gpu_options={"strategy": "least_loaded", "priority": 3}
    ),
    "memory_optimized 8 GB": client.submit(
        run_on_gpu, 200.0, 8192, pure=False,
        gpu_options={"strategy": "memory_optimized", "memory_mb": 8192, "priority": 4},
    ),
    "task_specific text_generation": client.submit(
        run_on_gpu, 200.0, pure=False,
        gpu_options={"strategy": "task_specific", "task_type": "text_generation", "priority": 5},
    ),
    "hybrid 40 GB": client.submit(
        run_on_gpu, 200.0, 40960, pure=False,
        gpu_options={"strategy": "hybrid", "memory_mb": 40960, "task_type": "training", "priority": 2},
    ),
}
for name, future in jobs.items():
    result = future.result()
    print(f"{name:30} -> GPU {result['gpu']}  ({result['device_seconds']:.2f} s of device time)")""",
    ),
    (
        "md",
        """Options are validated on the client, so a bad value fails at once, naming the field, before anything
reaches the cluster:""",
    ),
    (
        "code",
        """try:
    client.submit(run_on_gpu, 1.0, gpu_options={"priority": 9, "strategy": "fast est"})
except GpuOptionsError as exc:
    print("rejected:", exc)""",
    ),
    (
        "md",
        """## 4. Split a batch across GPUs, with a progress bar

`submit_batch(items, fn)` cuts the batch into a few chunks per active GPU (never smaller than
`gpu.multi_gpu.min_batch_size_per_gpu`), each GPU's share in proportion to its speed: the speed the router
learned for the task type, else `speed_gflops` in the GPU's info; where neither is known (as here, before
anything is learned) the shares are equal. `batch.result()` keeps input order; displaying the batch shows
its chunks as they finish (`distributed.progress(batch.futures)` draws a live bar too).""",
    ),
    (
        "code",
        """def infer(item):
    \"\"\"Per-item GPU work: 20 GFLOP (10 ms on an A100, 40 ms on a T4).\"\"\"
    return {"item": item, "gpu": run_on_gpu(20.0)["gpu"]}


batch = client.submit_batch(range(96), infer, gpu_options={"strategy": "least_loaded", "task_type": "embedding"})
print(f"{len(batch)} items in {len(batch.futures)} chunks of {batch.sizes[0]}")
wait(batch.futures)
batch""",
    ),
    (
        "code",
        """results = batch.result()
assert [r["item"] for r in results] == list(range(96))
print("items per GPU:", dict(sorted(Counter(r["gpu"] for r in results).items())))""",
    ),
    (
        "md",
        """## 5. Why did a task go where it went?

`client.explain(future)` returns the router's decision: the GPU, the strategy, the reason, every eligible
GPU's score and why the others were rejected.""",
    ),
    (
        "code",
        """decision = client.explain(jobs["memory_optimized 8 GB"])
print(f"strategy: {decision['strategy']} -> GPU {decision['gpu']} ({decision['outcome']})")
print("reason:", decision["reason"])
for gpu, score in decision["scores"].items():
    print(f"  GPU {gpu}: score {score}")
for gpu, why in decision["rejected"].items():
    print(f"  GPU {gpu}: rejected, {why}")""",
    ),
    (
        "md",
        """## 6. Drain a GPU for maintenance

`drain_gpu` stops new work going to a GPU; what already runs there finishes. New tasks avoid it, and
`explain` says why.""",
    ),
    (
        "code",
        """print(client.drain_gpu(0, reason="driver update"))
print("status:", {g.id: g.status for g in client.gpus()})

while_drained = client.map(run_on_gpu, [50.0] * 12, pure=False, gpu_options={"strategy": "round_robin"})
used = sorted({r["gpu"] for r in client.gather(while_drained)})
print("GPUs used while GPU 0 drains:", used)
print("GPU 0:", client.explain(while_drained[0])["rejected"]["0"])
assert 0 not in used
client  # GPU 0 shows as drained, with the reason""",
    ),
    (
        "md",
        """## 7. Bring it back, look at the counters, shut down

`enable_gpu` undoes the drain; the next tasks use all four GPUs again.""",
    ),
    (
        "code",
        """print(client.enable_gpu(0))
after = client.map(run_on_gpu, [50.0] * 12, pure=False, gpu_options={"strategy": "round_robin"})
print("GPUs used after enabling GPU 0:", sorted({r["gpu"] for r in client.gather(after)}))
print("router counters:", client.router_status()["counters"])""",
    ),
    (
        "code",
        """import logging

logging.getLogger("distributed.nanny").setLevel(logging.ERROR)  # workers with torch loaded take a moment
cluster.close()""",
    ),
]


def build() -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, source in CELLS:
        nb.cells.append(new_markdown_cell(source) if kind == "md" else new_code_cell(source))
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids: regenerating gives the same file
    nbformat.validate(nb)
    return nb


def execute(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Run every cell in a fresh python3 kernel (in this folder), keeping the outputs."""
    import nbclient

    resources = {"metadata": {"path": str(HERE)}}
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources=resources).execute()
    return nb


if __name__ == "__main__":
    import sys

    path = HERE / "quickstart.ipynb"
    notebook = build()
    nbformat.write(notebook if "--no-execute" in sys.argv else execute(notebook), path)
    print(f"wrote {path}")
