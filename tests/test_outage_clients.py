"""``altlas-dask submit`` and the console through a scheduler outage (issue 13 item 1): one clear line while
the scheduler is away, and they work again when it is back, without restarting anything.

Real ``dask scheduler`` / ``dask worker`` processes (tests/outage_helpers.py); the CLI as a subprocess; the
console's pages through Streamlit's own headless runner (``AppTest``: the real script, session state and
caches, in this process). tests/test_console.py has the same in a browser, where the pages come back with
no click.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import cli_command, cli_env, wait_for
from outage_helpers import address, bring_back, kill_scheduler, scheduler_and_worker
from test_api_outage import Outage

from altlas_dask.client.gpu_client import Client

LONG_GFLOP = 2000 * 120  # two minutes of modelled work: still running when the scheduler dies
APP = Path(__file__).resolve().parents[1] / "altlas_dask" / "console" / "app.py"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Outage]:
    with scheduler_and_worker(tmp_path) as world:
        yield world


def connected(world: Outage) -> Client:
    client = Client(address(world), timeout=30, set_as_default=False)
    wait_for(lambda: client.gpus(), timeout=120, interval=0.2, what="the worker's GPU")
    return client


def submit(world: Outage, *args: str) -> subprocess.Popen[str]:
    command = [*cli_command(), "--config", str(world.config_path), "--connect-timeout", "1", "submit", "--workload"]
    command += ["modelled", *args]
    return subprocess.Popen(
        [*command, "--scheduler", address(world)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )


def one_error_line(done: subprocess.Popen[str], stderr: str, *words: str) -> str:
    assert done.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for word in words:
        assert word in lines[0], stderr
    return lines[0]


def test_submit_through_a_scheduler_outage_is_one_line_exit_2_and_works_when_it_is_back(world: Outage):
    with connected(world) as client:
        run = submit(world, "--count", "2", "--param", f"work_gflop={LONG_GFLOP}")
        wait_for(
            lambda: sum(client.router_status()["tracked"].get(s, 0) for s in ("placed", "running")) == 2,
            timeout=120,
            what="the run's tasks on the GPU",
        )
    kill_scheduler(world)
    _, stderr = run.communicate(timeout=120)
    one_error_line(run, stderr, "lost the connection to the scheduler", address(world), "0/2 calls completed")
    assert "2/2" not in stderr  # the futures Dask cancelled with the connection are not shown as done

    down = submit(world, "--count", "1")
    _, stderr = down.communicate(timeout=120)
    one_error_line(down, stderr, f"cannot reach the scheduler at {address(world)}")

    bring_back(world, "worker-b")
    with connected(world):
        pass
    again = submit(world, "--count", "1", "--json")
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0 and '"completed": 1' in stdout, (stdout, stderr)


def test_console_says_the_scheduler_is_away_in_one_line_and_serves_again_when_it_is_back(
    world: Outage, monkeypatch: pytest.MonkeyPatch
):
    from streamlit.testing.v1 import AppTest

    from altlas_dask.accounting.api_keys import Principal
    from altlas_dask.console.views import common

    monkeypatch.setenv("ALTLAS_SCHEDULER", address(world))
    monkeypatch.setenv("ALTLAS_CONFIG", str(world.config_path))
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])  # AppTest installs its page there
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.session_state["principal"] = Principal("console-outage", "user", "key-1")

    def page() -> dict[str, Any]:
        app.run()
        assert not app.exception, [e.value for e in app.exception]
        return {
            "errors": [e.value for e in app.error],
            "metrics": {m.label: m.value for m in app.metric},
        }

    def serving() -> dict[str, Any] | None:
        shown = page()
        return shown if not shown["errors"] and shown["metrics"].get("Active GPUs") == "1 / 1" else None

    try:
        with connected(world):
            wait_for(serving, timeout=60, interval=0.5, what="the GPUs page")
        kill_scheduler(world)
        for _ in range(2):  # the first run finds the connection closed, the next cannot connect
            shown = page()
            assert len(shown["errors"]) == 1 and not shown["metrics"], shown
            (error,) = shown["errors"]
            assert f"Cannot reach the scheduler at {address(world)}" in error and "retries every" in error, error
            assert "Traceback" not in error and "\n" not in error
        assert not common.scheduler_listening(address(world))  # what the page's retry looks for

        bring_back(world, "worker-b")
        assert wait_for(lambda: common.scheduler_listening(address(world)), timeout=60, what="the scheduler")
        wait_for(serving, timeout=120, interval=0.5, what="the GPUs page once the scheduler is back")
    finally:
        common._connection.clear()  # closes the console's clients
