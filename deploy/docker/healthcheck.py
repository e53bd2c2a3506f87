"""Container health check: exit 0 when healthy. Standard library only.

GET $ALTLAS_HEALTH_URL (default the scheduler's /health) and expect HTTP 200. Each role serves one: scheduler
``:8787/health``, gateway ``:8000/api/v1/health``, console ``:8501/_stcore/health``.

A GPU worker container sets $ALTLAS_HEALTH_DIR instead: each of its workers (one per GPU, each on its own port)
registers its ``/altlas/health`` URL there (altlas_dask/worker/health.py), which answers 200 only while that
worker's GPU is bound and readable. Every registered worker must answer 200, and there must be as many as
$ALTLAS_EXPECTED_WORKERS (default: the GPUs ``nvidia-smi -L`` lists, else at least one).
"""

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

URL = os.environ.get("ALTLAS_HEALTH_URL", "http://127.0.0.1:8787/health")
HEALTH_DIR = os.environ.get("ALTLAS_HEALTH_DIR")


def unhealthy(why: str) -> None:
    print(f"unhealthy: {why}", file=sys.stderr)  # shown by `docker inspect` / `kubectl describe`
    sys.exit(1)


def gpu_count() -> int:
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 1
    return max(1, sum(1 for line in listed.splitlines() if line.startswith("GPU ")))


def urls() -> list[str]:
    if not HEALTH_DIR:
        return [URL]
    registered = sorted(Path(HEALTH_DIR).glob("*.url"))
    expected = int(os.environ.get("ALTLAS_EXPECTED_WORKERS") or gpu_count())
    if len(registered) < expected:
        unhealthy(f"{len(registered)} of {expected} GPU workers have registered in {HEALTH_DIR}")
    return [path.read_text().strip() for path in registered]


for url in urls():
    try:
        with urllib.request.urlopen(url, timeout=4) as response:  # noqa: S310 (a URL the image's owner sets)
            if response.status != 200:
                unhealthy(f"{url}: HTTP {response.status}")
    except Exception as exc:  # any failure is "unhealthy"; say why
        unhealthy(f"{url}: {exc}")
sys.exit(0)
