"""``GPU_CHECK_DRY=1 scripts/gpu-check.sh``: the real-GPU check's own script, run end to end on the simulated pool.

The same steps as on a GPU server (detection, a command-line worker, ``up``, ``selftest``, the gateway, router
vs plain Dask) with the CUDA parts faked or skipped, each saying so, so the script's mistakes show here first.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from conftest import REPO

STEPS = ["machine", "install", "gpus", "fields", "cuda-worker", "up", "selftest", "gateway", "router-vs-dask"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gpu_check_dry_run_passes_every_step_and_says_what_it_faked(tmp_path: Path):
    out = tmp_path / "gpu-check-out"
    env = {**os.environ, "GPU_CHECK_DRY": "1", "VENV": str(Path(sys.executable).parents[1]), "PORT": str(free_port())}
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu-check.sh"), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["ok"] is True
    steps = {s["step"]: s for s in summary["steps"]}
    assert list(steps) == STEPS and all(s["rc"] == 0 for s in steps.values())
    assert steps["install"]["note"].startswith("dry run: venv + .pth")  # the mechanism the GPU machine needs
    assert steps["cuda-worker"]["note"].startswith("faked: dask worker with dask-cuda's preload argv")
    assert "simulated" in steps["gpus"]["note"] and "CPU" in steps["gateway"]["note"]
    assert all(gpu["simulated"] for gpu in summary["gpus"]["gpus"])
    assert summary["selftest"]["passed"] is True
    assert summary["router-vs-dask"]["ratios"]["throughput_router_over_dask"] > 0
    assert "DRY RUN" in (out / "summary.md").read_text().splitlines()[0]


def fields_check(tmp_path: Path, gpus: list) -> int:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from gpu_check import main
    finally:
        sys.path.remove(str(REPO / "scripts"))
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps({"gpus": [g.to_api() for g in gpus]}))
    return main(["fields", str(path)])


def test_the_fields_check_accepts_unknown_fields_and_rejects_placeholders(tmp_path: Path):
    """The real-GPU step, on states the real pynvml makes (its C library faked): an unsupported field is fine
    when listed as unknown; a placeholder that is not listed fails the check."""
    from nvml_library import FakeDevice, real_pynvml_on

    from altlas_dask.gpus import NvmlInventory

    board = FakeDevice("NVIDIA H100 80GB HBM3", "GPU-1234", (9, 0), 80 * 1024**3, 1024**3, temperature=None)
    state = NvmlInventory(nvml=real_pynvml_on([board])).state(0)
    assert state.unknown == ("temperature_c",)
    assert fields_check(tmp_path, [state]) == 0
    assert fields_check(tmp_path, [state.with_(unknown=())]) == 1  # temperature 0 passed off as a reading
