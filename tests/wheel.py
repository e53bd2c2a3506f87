"""A built wheel of this checkout, installed outside it, for tests that run altlas-dask as a user of the wheel.

The wheel is built from a copy of the sources in a temp folder (setuptools writes build/ and *.egg-info
next to what it builds) and installed with ``pip install --no-deps --target``; its dependencies come from
this interpreter's environment. ``command(...)`` runs ``altlas-dask`` from that install, in a folder
outside the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "cluster.yaml", "altlas_dask", "scheduler_plugins")


@dataclass(frozen=True)
class WheelInstall:
    wheel: Path
    target: Path  # site folder holding the installed package
    scratch: Path  # a working folder outside the checkout

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ALTLAS_") or k == "ALTLAS_HOME"}
        env.update(PYTHONPATH=str(self.target), COLUMNS="250", PYTHONIOENCODING="utf-8", **extra)
        return env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "altlas_dask.cli.main", *args]

    def files(self) -> set[str]:
        with zipfile.ZipFile(self.wheel) as archive:
            return set(archive.namelist())


def build_and_install(root: Path) -> WheelInstall:
    source = root / "src"
    source.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(path, source / name)
    dist, target, scratch = root / "dist", root / "site", root / "scratch"
    scratch.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source)], check=True)
    wheel = next(dist.glob("altlas_dask-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    return WheelInstall(wheel, target, scratch)
