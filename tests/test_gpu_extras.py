"""The GPU extras install: each resolves for Linux x86-64 / Python 3.12 from package metadata alone.

``uv pip compile`` reads the index's metadata (no wheel is downloaded, torch's included), so a set that
cannot be installed together (dask-cuda[cu12] with a CUDA 13 torch, say) fails here and not on a GPU
server after a gigabyte of downloads. Needs the package index (CI reaches it).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from uv import find_uv_bin

ROOT = Path(__file__).resolve().parents[1]
TARGET = ["--python-platform", "x86_64-manylinux_2_28", "--python-version", "3.12"]
# extra -> the CUDA major version every CUDA package of its resolution must be built for
EXTRAS = {"gpu": 13, "gpu-cu12": 12}


def resolve(extra: str, out: Path) -> dict[str, str]:
    """``{name: version}`` of the full resolution of ``.[extra]`` (fails the test with uv's reason)."""
    done = subprocess.run(
        [find_uv_bin(), "pip", "compile", "pyproject.toml", "--extra", extra, *TARGET, "--no-config"]
        + ["--no-header", "--no-annotate", "--quiet", "--output-file", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"the {extra!r} extra does not resolve:\n{done.stderr}"
    pins = {}
    for line in out.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line):
            pins[match[1].lower()] = match[2]
    return pins


@pytest.mark.parametrize(("extra", "cuda"), EXTRAS.items())
def test_gpu_extra_resolves_for_linux_x86_64_python_3_12(extra, cuda, tmp_path):
    pins = resolve(extra, tmp_path / f"{extra}.txt")
    assert {"dask-cuda", "torch", "cuda-bindings", "distributed", "matplotlib"} <= set(pins)
    assert int(pins["dask-cuda"].split(".")[0]) >= 26
    assert pins["cuda-bindings"].split(".")[0] == str(cuda), f"{extra}: cuda-bindings {pins['cuda-bindings']}"
    other = 12 if cuda == 13 else 13
    suffixed = sorted(name for name in pins if name.startswith("nvidia-") and name.endswith(f"-cu{other}"))
    assert not suffixed, f"{extra}: CUDA {other} packages in a CUDA {cuda} set: {suffixed}"
    if cuda == 12:  # torch's runtime wheels are the CUDA 12 ones (PyPI names them -cu12)
        assert "nvidia-cuda-runtime-cu12" in pins, pins
    else:  # PyPI's CUDA 13 torch (2.11 and later) needs the un-suffixed CUDA 13 wheels
        assert pins["nvidia-cuda-runtime"].startswith("13."), pins
        assert tuple(int(p) for p in pins["torch"].split(".")[:2]) >= (2, 11)
