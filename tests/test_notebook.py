"""notebooks/quickstart.ipynb runs top to bottom, headless, and shows what its text says it shows.

The notebook starts its own simulated 4-GPU cluster (free local ports) inside the kernel and closes it
in its last cell. The kernel is the ``python3`` kernel spec; jupyter_client launches its ``python``
argv as ``sys.executable``, and a cell appended here (to the in-memory copy only) checks that the kernel
really runs in this test's environment.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
QUICKSTART = NOTEBOOKS / "quickstart.ipynb"
CELL_TIMEOUT = 180  # seconds per cell; the whole notebook takes well under a minute on 2 cores
ENV_PROBE = "import sys\nprint('KERNEL-PREFIX', sys.prefix)"


def load_generator():
    spec = importlib.util.spec_from_file_location("build_quickstart", NOTEBOOKS / "build_quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cell_text(cell) -> str:
    """Everything a code cell showed: streams, results and displays (their text/plain), and errors."""
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif out["output_type"] in ("execute_result", "display_data"):
            parts.append(out.get("data", {}).get("text/plain", ""))
        elif out["output_type"] == "error":
            parts.append(f"{out['ename']}: {out['evalue']}")
    return "".join(parts)


def test_committed_notebook_shows_its_outputs():
    nb = nbformat.read(QUICKSTART, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the quickstart has no code cells"
    assert all(c.execution_count is not None for c in code), "run notebooks/build_quickstart.py (it keeps outputs)"
    assert not [c for c in code if any(o["output_type"] == "error" for o in c.outputs)]
    shown = [o for c in code for o in c.outputs if "text/html" in o.get("data", {})]
    assert any("/altlas-gpus" in o["data"]["text/html"] for o in shown), "no GPU table with its link"


def test_committed_notebook_matches_its_generator():
    committed = nbformat.read(QUICKSTART, as_version=4)
    built = load_generator().build()
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in built.cells], (
        "notebooks/quickstart.ipynb is stale: run notebooks/build_quickstart.py"
    )


@pytest.fixture(scope="module")
def executed():
    """The quickstart, executed in a fresh python3 kernel; ``find(snippet)`` returns a code cell's text."""
    nb = nbformat.read(QUICKSTART, as_version=4)
    run = copy.deepcopy(nb)
    run.cells.append(nbformat.v4.new_code_cell(ENV_PROBE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTLAS_")}  # the repo's cluster.yaml as is
    client = nbclient.NotebookClient(
        run, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute(env=env)  # raises CellExecutionError (with the traceback) if any cell fails

    def find(snippet: str) -> str:
        cells = [c for c in run.cells if c.cell_type == "code" and snippet in c.source]
        assert len(cells) == 1, f"{len(cells)} code cells contain {snippet!r}"
        return cell_text(cells[0])

    return run, find


def test_runs_without_errors_in_this_environment(executed):
    nb, find = executed
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "some cells did not run"
    errors = [cell_text(c) for c in code if any(o["output_type"] == "error" for o in c.outputs)]
    assert errors == []
    kernel_prefix = find(ENV_PROBE).split("KERNEL-PREFIX", 1)[1].strip()
    assert Path(kernel_prefix).resolve() == Path(sys.prefix).resolve(), "the kernel is not this environment's python"


def test_connects_to_a_simulated_cluster(executed):
    _, find = executed
    text = find("cluster = start_cluster(")
    assert "simulated: True" in text
    assert re.search(r"scheduler: tcp://127\.0\.0\.1:\d+", text), text


def test_lists_the_four_gpus(executed):
    _, find = executed
    table = find("client.gpus_frame()")
    assert table.count("Simulated A100 80GB") == 2, table
    assert table.count("Simulated T4 16GB") == 2, table
    assert len(re.findall(r"\bactive\b", table)) == 4, table  # not "active_requests"


def test_gpu_options_route_as_configured(executed):
    _, find = executed
    text = find('"memory_optimized 8 GB": client.submit(')
    placed = dict(re.findall(r"^(.+?)\s+-> GPU (\d+)", text, flags=re.MULTILINE))
    assert set(placed) == {"least_loaded", "memory_optimized 8 GB", "task_specific text_generation", "hybrid 40 GB"}
    assert placed["task_specific text_generation"] == "1"  # cluster.yaml: text_generation -> gpu_1
    assert placed["memory_optimized 8 GB"] in {"2", "3"}  # best fit for 8 GB: a 16 GB T4
    assert placed["hybrid 40 GB"] in {"0", "1"}  # 40 GB does not fit a T4 at all


def test_invalid_options_are_rejected_on_the_client(executed):
    _, find = executed
    text = find('"strategy": "fast est"')
    assert "rejected: invalid gpu_options" in text
    assert "gpu_options.priority" in text and "gpu_options.strategy" in text


def test_batch_split_with_progress(executed):
    _, find = executed
    text = find("client.submit_batch(")
    match = re.search(r"96 items in (\d+) chunks", text)
    assert match and int(match.group(1)) > 1, text
    assert f"{match.group(1)} chunks" in text and "96 / 96 items done" in text
    per_gpu = find("batch.result()")
    counts = re.search(r"items per GPU: (\{.*\})", per_gpu)
    assert counts, per_gpu
    assert sum(int(n) for n in re.findall(r": (\d+)", counts.group(1))) == 96


def test_explain_shows_the_strategy_and_reason(executed):
    _, find = executed
    text = find("client.explain(jobs[")
    assert re.search(r"strategy: memory_optimized -> GPU [23] \(placed\)", text), text
    assert "reason: best fit" in text
    assert "score" in text


def test_drain_then_enable(executed):
    _, find = executed
    drained = find("client.drain_gpu(0")
    assert "'draining': True" in drained
    assert "0: 'maintenance'" in drained
    assert "GPUs used while GPU 0 drains: [1, 2, 3]" in drained
    assert "GPU 0: status maintenance" in drained
    enabled = find("client.enable_gpu(0)")
    assert "'draining': False" in enabled
    assert "GPUs used after enabling GPU 0: [0, 1, 2, 3]" in enabled
