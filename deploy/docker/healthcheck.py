"""Container health check: GET $ALTLAS_HEALTH_URL (default the scheduler's /health); exit 0 on HTTP 200.

Each role serves one: scheduler ``:8787/health``, GPU worker ``:8788/health`` (its dashboard port),
gateway ``:8000/api/v1/health``, console ``:8501/_stcore/health``. Standard library only.
"""

import os
import sys
import urllib.request

URL = os.environ.get("ALTLAS_HEALTH_URL", "http://127.0.0.1:8787/health")

try:
    with urllib.request.urlopen(URL, timeout=4) as response:  # noqa: S310 (a URL the image's owner sets)
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:  # any failure is "unhealthy"; say why in `docker inspect`
    print(f"unhealthy: {URL}: {exc}", file=sys.stderr)
    sys.exit(1)
