"""A GPU worker's own health: ``/altlas/health`` on its HTTP server answers 200 only while its GPU is bound
and readable (distributed's ``/health`` answers ``ok`` for a worker with no GPU at all).

With ``$ALTLAS_HEALTH_DIR`` set, each worker also writes its health URL there (one file per GPU UUID), so a
container running several workers (``dask cuda worker`` on a node with several GPUs, each worker on its own
port) can check every one of them: ``deploy/docker/healthcheck.py`` does.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from tornado.web import RequestHandler

HEALTH_PATH = "/altlas/health"
HEALTH_DIR_ENV = "ALTLAS_HEALTH_DIR"


def gpu_health(plugin: Any, worker: Any) -> tuple[bool, dict[str, Any]]:
    """(healthy, what to answer) for ``worker`` and its GPU plugin (None: not installed)."""
    if plugin is None or plugin.device is None:
        return False, {"healthy": False, "reason": "no GPU is bound to this worker"}
    state = plugin.current_state(worker)
    body = {"healthy": state.status != "error", "gpu": state.id, "uuid": state.uuid, "status": state.status}
    if state.status == "error":
        body["reason"] = state.name
    return body["healthy"], body


class GpuHealthHandler(RequestHandler):
    def initialize(self, server: Any, plugin_name: str) -> None:
        self.worker = server
        self.plugin_name = plugin_name

    def get(self) -> None:
        healthy, body = gpu_health(self.worker.plugins.get(self.plugin_name), self.worker)
        self.set_status(200 if healthy else 503)
        self.write(body)


def serve(worker: Any, plugin_name: str, uuid: str) -> None:
    """Add the route to the worker's HTTP server; register its URL in ``$ALTLAS_HEALTH_DIR`` when set."""
    application = getattr(worker, "http_application", None)
    if application is None:
        return
    application.add_handlers(r".*", [(HEALTH_PATH, GpuHealthHandler, {"server": worker, "plugin_name": plugin_name})])
    directory = os.environ.get(HEALTH_DIR_ENV)
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        url = f"http://127.0.0.1:{worker.http_server.port}{HEALTH_PATH}"
        (Path(directory) / f"{uuid}.url").write_text(url + "\n")


def withdraw(uuid: str) -> None:
    """A worker closing on purpose takes its URL out of ``$ALTLAS_HEALTH_DIR``."""
    directory = os.environ.get(HEALTH_DIR_ENV)
    if directory:
        with contextlib.suppress(FileNotFoundError):
            (Path(directory) / f"{uuid}.url").unlink()
