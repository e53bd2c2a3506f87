"""The ``altlas-dask`` command line, run as a subprocess the way a user runs it."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from conftest import CLUSTER_YAML, altlas, cli_command, cli_env, nvml_sees_a_gpu, table_rows

from altlas_dask.client.live import gpu_workers
from altlas_dask.gpus.simulated import simulated_uuid
from altlas_dask.ops import services

SEED_KEYS = {  # GpuState.to_api: the one GPU shape (seed 001 6.3.3 and seed 004 3.5.4 fields)
    "id",
    "gpu_id",
    "uuid",
    "name",
    "compute_capability",
    "status",
    "health_status",
    "utilization",
    "memory_utilization",
    "memory",
    "memory_used",
    "memory_total",
    "task_count",
    "active_requests",
    "queued_requests",
    "temperature",
    "power",
    "performance_index",
    "error_rate",
    "uptime",
    "simulated",
    "worker",
}
POOL_NAMES = ["Simulated A100 80GB"] * 2 + ["Simulated T4 16GB"] * 2
POOL_MEMORY = [81920, 81920, 16384, 16384]


# -- gpus ---------------------------------------------------------------------------------------


def test_gpus_simulate_prints_a_row_per_gpu():
    done = altlas("gpus", "--simulate", "4")
    assert done.returncode == 0, done.stderr
    assert "Simulated GPUs" in done.stdout
    rows = table_rows(done.stdout)
    assert [row["GPU"] for row in rows] == ["0", "1", "2", "3"]
    assert [row["Name"] for row in rows] == POOL_NAMES
    assert [row["CC"] for row in rows] == ["8.0", "8.0", "7.5", "7.5"]
    assert [row["Memory used / total (MB)"] for row in rows] == [f"0 / {m}" for m in POOL_MEMORY]
    assert [row["Util %"] for row in rows] == ["0"] * 4
    assert [row["Temp °C"] for row in rows] == ["35"] * 4
    assert [row["Power W"] for row in rows] == ["50 / 400", "50 / 400", "10 / 70", "10 / 70"]
    assert [row["Health"] for row in rows] == ["healthy"] * 4
    assert [row["Status"] for row in rows] == ["active"] * 4


def test_gpus_json_has_the_seed_shape():
    done = altlas("gpus", "--simulate", "4", "--json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert list(payload) == ["gpus"]
    gpus = payload["gpus"]
    assert len(gpus) == 4
    for k, gpu in enumerate(gpus):
        assert set(gpu) == SEED_KEYS
        assert gpu["gpu_id"] == f"gpu_{k}"
        assert gpu["uuid"] == simulated_uuid(k)
        assert gpu["name"] == POOL_NAMES[k]
        assert gpu["memory"] == {"total": POOL_MEMORY[k], "used": 0, "free": POOL_MEMORY[k]}
        assert gpu["memory_total"] == POOL_MEMORY[k] * 1024 * 1024 and 0 <= gpu["utilization"] <= 100
        assert set(gpu["power"]) == {"usage", "limit"}
        assert gpu["power"]["limit"] == (400 if k < 2 else 70)
        assert gpu["health_status"] == "healthy"
        assert gpu["simulated"] is True
        assert gpu["worker"] is None


@pytest.mark.skipif(nvml_sees_a_gpu(), reason="NVML sees a real GPU on this machine")
def test_gpus_without_a_gpu_falls_back_to_the_simulated_pool_and_says_so():
    done = altlas("gpus", "--json")
    assert done.returncode == 0, done.stderr
    assert "falling back to the simulated GPU pool" in done.stderr
    assert "WARNING" in done.stderr
    assert [g["name"] for g in json.loads(done.stdout)["gpus"]] == POOL_NAMES


def test_set_override_reaches_the_command():
    done = altlas("--set", "gpu.detection.min_compute_capability=8.0", "gpus", "--simulate", "4", "--json")
    assert done.returncode == 0, done.stderr
    assert [g["gpu_id"] for g in json.loads(done.stdout)["gpus"]] == ["gpu_0", "gpu_1"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "gpu.bogus=1", "gpus"], "'gpu.bogus'"),
        (["--set", "gpu.detection.min_compute_capability=9.0", "gpus", "--simulate", "2"], "min_compute_capability"),
        (["--set", "gpu.multi_gpu.strategies=[hybrid", "gpus"], "--set gpu.multi_gpu.strategies: '[hybrid' is not a"),
        (["gpus", "--scheduler", "nonsense"], "--scheduler: 'nonsense' is not a scheduler address"),
        (["submit", "--workload", "modelled", "--scheduler", "nonsense"], "'nonsense' is not a scheduler address"),
        (["selftest", "--scheduler", "tcp://127.0.0.1:notaport"], "is not a scheduler address"),
    ],
)
def test_configuration_errors_exit_2_with_one_line(args, expected):
    """The CLI's one convention (docs/cli.md): every user-facing error is one line and exit code 2."""
    done = altlas(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0]
    assert "Traceback" not in done.stderr


def test_a_command_error_is_exit_2_like_every_other():
    done = altlas("keys", "revoke", "no-such-key")  # a click.ClickException: exit 1 before the convention
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == "error: no active key 'no-such-key'"


def test_missing_config_file_exits_2(tmp_path):
    missing = tmp_path / "nope.yaml"
    done = subprocess.run(
        [*cli_command(), "--config", str(missing), "gpus"], capture_output=True, text=True, timeout=60, env=cli_env()
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: config file {str(missing)!r} does not exist"


def test_a_scheduler_without_the_router_is_named_as_such():
    """``gpus --scheduler`` falls back to what the workers report, and ``api`` stops with one line, when the
    scheduler answers the router's RPCs with no handler (RouterClient's 503)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None) as plain:
        address = plain.scheduler_address
        listed = altlas("gpus", "--scheduler", address, "--json")
        refused = altlas("api", "--scheduler", address, "--port", "0", "--connect-timeout", "30")
    assert listed.returncode == 0 and json.loads(listed.stdout) == {"gpus": []}, listed.stderr
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert f"the scheduler at {address} has no GPU router" in refused.stderr, refused.stderr


def test_gpus_scheduler_lists_the_live_gpus_with_their_workers(gpu_cluster, dask_client):
    address = gpu_cluster.scheduler_address
    workers = gpu_workers(dask_client)

    done = altlas("gpus", "--scheduler", address)
    assert done.returncode == 0, done.stderr
    assert f"GPUs of {address}" in done.stdout
    rows = table_rows(done.stdout)
    assert [row["GPU"] for row in rows] == ["0", "1", "2", "3"]
    assert [row["Name"] for row in rows] == POOL_NAMES
    assert [row["Worker"] for row in rows] == [workers[k] for k in range(4)]

    done = altlas("gpus", "--scheduler", address, "--json")
    assert done.returncode == 0, done.stderr
    gpus = json.loads(done.stdout)["gpus"]
    assert [g["gpu_id"] for g in gpus] == ["gpu_0", "gpu_1", "gpu_2", "gpu_3"]
    assert [g["worker"] for g in gpus] == [workers[k] for k in range(4)]
    assert all(set(g) == SEED_KEYS for g in gpus)


# -- up -------------------------------------------------------------------------------------------


def test_up_serves_the_dashboard_and_stops_on_ctrl_c(tmp_path):
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [
                *cli_command(),
                "--config",
                str(CLUSTER_YAML),
                "up",
                "--simulate",
                "4",
                "--scheduler-address",
                "127.0.0.1:0",
                "--dashboard-address",
                "127.0.0.1:0",
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=cli_env(),
            cwd=tmp_path,
            start_new_session=True,  # its own process group: cleaned up below whatever happens
        )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        output, dashboard = [], None
        deadline = time.monotonic() + 120
        while dashboard is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no 'Dashboard:' line within 120 s; stdout so far:\n{''.join(output)}")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"'up' exited ({proc.wait()}) before printing the dashboard:\n{stderr_path.read_text()}")
            output.append(line)
            if match := re.match(r"Dashboard: (http://\S+)", line):
                dashboard = match.group(1)
        text = "".join(output)
        assert re.search(r"Scheduler: tcp://127\.0\.0\.1:\d+", text)
        assert "Identity:  none (open mode: user names are self-declared" in text  # issue 12: says so in one line
        assert [row["Name"] for row in table_rows(text)] == POOL_NAMES

        with urllib.request.urlopen(dashboard, timeout=30) as response:
            assert response.status == 200

        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
        try:
            returncode = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("'up' did not stop within 60 s of SIGINT")
        assert returncode == 0, stderr_path.read_text()
        assert stderr_path.read_text().splitlines() == ["Press Ctrl-C to stop.", "Stopping cluster..."]  # quiet
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(dashboard, timeout=10)
        scheduler = re.search(r"Scheduler: (tcp://\S+)", text).group(1)
        dashboard_address = dashboard.removeprefix("http://").split("/")[0]
        for address in (scheduler, dashboard_address):  # `up` may start again at once on the same addresses
            assert not services.port_in_use(address), address
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_gpus_table_shows_a_drained_gpu_and_why(gpu_cluster):
    from altlas_dask.client.gpu_client import Client

    with Client(gpu_cluster.scheduler_address, gpu_defaults={"user": "admin"}, timeout=30) as admin:
        admin.drain_gpu(1, reason="swap the fan")
        try:
            done = altlas("gpus", "--scheduler", gpu_cluster.scheduler_address)
        finally:
            admin.enable_gpu(1)
    assert done.returncode == 0, done.stderr
    rows = {row["GPU"]: row for row in table_rows(done.stdout)}
    assert (rows["1"]["Health"], rows["1"]["Status"], rows["1"]["Reason"]) == ("drained", "maintenance", "swap the fan")
    assert {rows[g]["Health"] for g in ("0", "2", "3")} == {"healthy"}


def test_no_design_seed_jargon_in_user_facing_text(tmp_path):
    """The README, every command's --help and the REST API's reference speak of features, not of the design
    seeds ("seed 003") they came from."""
    import click
    from click.testing import CliRunner

    from altlas_dask.accounting.api_keys import KeyStore
    from altlas_dask.api import create_app
    from altlas_dask.cli.main import cli
    from altlas_dask.config import build_config

    def commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
        found = [path]
        for name, command in group.commands.items():
            found += commands(command, (*path, name)) if isinstance(command, click.Group) else [(*path, name)]
        return found

    texts = {"README.md": (CLUSTER_YAML.parent / "README.md").read_text()}
    for path in commands(cli):
        texts[" ".join(path) or "altlas-dask"] = CliRunner().invoke(cli, [*path, "--help"], terminal_width=200).output
    config = build_config({"accounting": {"database": str(tmp_path / "keys.sqlite")}})
    spec = create_app("tcp://127.0.0.1:9", config, keys=KeyStore(config.accounting.database)).openapi()
    texts["openapi"] = json.dumps(spec)
    assert all(len(text) > 100 for text in texts.values()), texts
    assert not {where for where, text in texts.items() if re.search(r"seed[ _]?00\d", text, re.I)}


@pytest.mark.parametrize(("raw", "seconds"), [(None, 5.0), ("0.5", 0.5), ("abc", None), ("0", None), ("-1", None)])
def test_console_pages_wait_the_connect_timeout_they_are_given(monkeypatch, raw, seconds):
    """`altlas-dask --connect-timeout S console` hands S to the pages as $ALTLAS_CONNECT_TIMEOUT."""
    from altlas_dask.console.views.common import ConsoleError, connect_timeout

    if raw is None:
        monkeypatch.delenv("ALTLAS_CONNECT_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("ALTLAS_CONNECT_TIMEOUT", raw)
    if seconds is None:
        with pytest.raises(ConsoleError, match=f"ALTLAS_CONNECT_TIMEOUT: '{raw}' is not a number of seconds"):
            connect_timeout()
    else:
        assert connect_timeout() == seconds
