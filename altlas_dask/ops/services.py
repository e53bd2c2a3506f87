"""The console and REST API that ``altlas-dask up`` serves beside the cluster, each a child process.

A service's URL is announced only once its health endpoint answers; one that exits or never
answers is reported in one line (its log's last line says why) and the cluster stays up.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT_S = 90.0


@dataclass
class Service:
    """One child process: what it is, where it answers, where its output goes."""

    name: str  # "console", "REST API"
    url: str  # what a person opens
    health: str  # what answers 200 once it is ready
    log: Path
    process: subprocess.Popen[bytes]

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.health, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def failure(self) -> str:
        """Why it is not serving, in one line: the last line of its log, else its exit code."""
        lines = [line.strip() for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1][:300]
        code = self.process.poll()
        return f"exited with code {code}" if code is not None else "no answer yet"

    def stop(self, timeout: float = 3.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(name: str, command: Sequence[str], url: str, health: str, log: Path) -> Service:
    """Start ``command`` in its own session (a terminal's Ctrl-C reaches only ``up``), output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(command), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return Service(name, url, health, log, process)


def wait_ready(
    services: Sequence[Service],
    report: Callable[[Service, str | None], None],
    stop: Callable[[], bool] = lambda: False,
    timeout: float = READY_TIMEOUT_S,
) -> list[Service]:
    """Poll until each service answers or fails; ``report(service, None)`` when ready, else with the reason.

    Returns the services that are up. A failed one is stopped.
    """
    pending, ready = list(services), []
    deadline = time.monotonic() + timeout
    while pending and not stop():
        for service in list(pending):
            if service.answers():
                ready.append(service)
                report(service, None)
            elif service.process.poll() is not None:
                report(service, service.failure())
            elif time.monotonic() > deadline:
                service.stop()
                report(service, f"no answer from {service.health} within {timeout:.0f} s ({service.failure()})")
            else:
                continue
            pending.remove(service)
        if pending:
            time.sleep(0.25)
    return ready


def port_in_use(address: str) -> bool:
    """True when ``host:port`` (port not 0) cannot be bound right now by a server that, like Dask's (tornado's
    ``bind_sockets``), sets ``SO_REUSEADDR``: connections of a stopped server left in TIME_WAIT do not count."""
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    if not (port.isascii() and port.isdigit()) or int(port) == 0:
        return False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host or "127.0.0.1", int(port)))
        except OSError:
            return True
    return False
