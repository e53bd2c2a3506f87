"""Every name altlas-dask calls on a third-party GPU library exists in the installed library.

The names are read from the package's source (AST), not listed by hand, so a new call is checked the day
it is written. nvidia-ml-py and torch are installed here; dask-cuda is not (see docs/design.md,
"Fakes of GPU libraries"), so its names are checked against its source in the preload test instead.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pynvml
import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("altlas_dask", "scheduler_plugins", "bench")
NVML_NAME = re.compile(r"^(nvml[A-Z]|NVML)")  # nvmlDeviceGetX, NVML_X, NVMLError_X; not self.nvml


def source_trees() -> dict[Path, ast.Module]:
    files = [f for package in PACKAGES for f in sorted((ROOT / package).rglob("*.py"))]
    return {f: ast.parse(f.read_text(), filename=str(f)) for f in files}


def dotted(node: ast.AST) -> str | None:
    """``torch.cuda.synchronize`` for that attribute chain, None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def nvml_names(trees: dict[Path, ast.Module]) -> dict[str, str]:
    """NVML names the code reaches: ``<module>.nvmlX`` / ``.NVML_X`` / ``.NVMLError_X`` attributes, and the
    same names given to ``getattr``/``hasattr`` as strings. Maps each name to one place that uses it."""
    found: dict[str, str] = {}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Attribute) and NVML_NAME.match(node.attr):
                name = node.attr
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and NVML_NAME.match(str(node.args[1].value))
            ):
                name = node.args[1].value
            if name is not None:
                found.setdefault(name, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def torch_cuda_names(trees: dict[Path, ast.Module]) -> dict[str, str]:
    found: dict[str, str] = {}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            name = dotted(node) if isinstance(node, ast.Attribute) else None
            if name and name.startswith("torch.cuda."):
                found.setdefault(name.split(".")[2], f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_pynvml_name_the_code_uses_exists_in_nvidia_ml_py():
    used = nvml_names(source_trees())
    # the scan sees the calls detection is made of (a scan that finds nothing would pass vacuously)
    assert {"nvmlInit", "nvmlDeviceGetCount", "nvmlDeviceGetMemoryInfo", "NVMLError_NotSupported"} <= set(used)
    missing = {name: where for name, where in used.items() if not hasattr(pynvml, name)}
    assert not missing, f"not in the installed nvidia-ml-py ({pynvml.__file__}): {missing}"


def test_every_torch_cuda_name_the_code_uses_exists_in_torch():
    used = torch_cuda_names(source_trees())
    assert {"synchronize", "empty_cache"} <= set(used)
    missing = {name: where for name, where in used.items() if not hasattr(torch.cuda, name)}
    assert not missing, f"not in the installed torch.cuda ({torch.__version__}): {missing}"


def test_the_scan_catches_a_misspelled_nvml_call(tmp_path):
    """The oracle of the contract: a call nvidia-ml-py does not have is reported with its place."""
    tree = ast.parse("def f(nv, h):\n    return nv.nvmlDeviceGetEnforcedPowerManagementLimit(h)\n")
    used = nvml_names({ROOT / "altlas_dask" / "example.py": tree})
    assert used == {"nvmlDeviceGetEnforcedPowerManagementLimit": "altlas_dask/example.py:2"}
    assert not hasattr(pynvml, "nvmlDeviceGetEnforcedPowerManagementLimit")
