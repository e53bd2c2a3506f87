"""``altlas-dask selftest`` (seed 003's test suite) and the config's ``test:`` section.

The whole suite runs end to end against a fresh simulated pool through the CLI, with the scenario
sizes kept small by the config; a failing scenario is shown on the shared cluster in-process.
"""

from __future__ import annotations

import json

import dask.config
import pytest
import yaml
from conftest import REPO, altlas, cli_command, cli_env, local_config

from altlas_dask.client.gpu_client import Client
from altlas_dask.config import ConfigError, build_config
from altlas_dask.ops.selftest import Selftest, passed, peak_memory

SEED_003 = REPO / "tests" / "data" / "seed_003_config.yaml"

SMALL = REPO / "altlas_dask" / "ops" / "selftest-small.yaml"  # seed 003's keys, sized for 2 CPU cores (--small)


def seed_003_config() -> dict:
    """Seed 003's configuration blocks (verbatim in tests/data), merged as one cluster.yaml."""
    return dask.config.merge(*yaml.safe_load_all(SEED_003.read_text()))


def test_seed_003_config_with_its_test_section_loads_unchanged():
    data = seed_003_config()
    assert set(data) == {"gpu", "test"}
    config = build_config(data)
    test = config.test
    assert test.detection.enabled
    assert (test.basic_functionality.input_size, test.basic_functionality.duration) == (1024, 5)
    assert (test.concurrent_processing.concurrent_tasks, test.concurrent_processing.task_count) == (4, 20)
    assert [(s.name, s.input_size) for s in test.performance.scenarios] == [
        ("small_model", 1024),
        ("medium_model", 4096),
        ("large_model", 8192),
    ]
    overload, timeout = test.error_handling.scenarios
    assert (overload.name, overload.concurrent_tasks, overload.input_size) == ("gpu_overload", 10, 16384)
    assert (timeout.name, timeout.duration) == ("task_timeout", 310)
    assert config.gpu.workload.timeout == 300  # seed 003: the timeout scenario's task outlasts it
    assert build_config({}).test == test  # the defaults are the seed's values


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"basic_functionality": {"input_size": 0}}, "test.basic_functionality.input_size: .*greater than or equal"),
        ({"concurrent_processing": {"threads": 2}}, "unknown key 'test.concurrent_processing.threads'"),
        (
            {
                "error_handling": {
                    "scenarios": [{"name": "disk_full", "input_size": 1, "output_size": 1, "duration": 1}]
                }
            },
            "test.error_handling.scenarios.0.name: .*'gpu_overload' or 'task_timeout' \\(got 'disk_full'\\)",
        ),
        ({"performance": {"scenarios": [{"name": "x", "input_size": 8}]}}, "test.performance.scenarios.0.output_size"),
    ],
)
def test_bad_test_section_values_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"test": change})


def test_peak_memory_counts_what_is_held_at_once_per_gpu():
    held = [(0, 0.0, 2.0, 10), (0, 1.0, 3.0, 20), (0, 3.0, 4.0, 5), (1, 0.0, 1.0, 7), (1, 1.0, 2.0, 7)]
    assert peak_memory(held) == {0: 30, 1: 7}  # GPU 1: one ends as the next starts


def test_selftest_passes_on_the_simulated_pool():
    small = yaml.safe_load(SMALL.read_text())
    assert small["gpu"]["workload"]["timeout"] == 3  # the timeout scenario's 600 s task is stopped after 3 s
    done = altlas("selftest", "--small", "--simulate", "2", "--json", timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    progress = [line for line in done.stderr.splitlines() if line.startswith("selftest: ")]
    assert progress[:2] == ["selftest: starting a local cluster", "selftest: warm_up: running"], done.stderr
    assert progress[2].startswith("selftest: warm_up: pass in "), done.stderr
    assert progress[-1].startswith("selftest: error_handling:task_timeout: pass in "), done.stderr
    report = json.loads(done.stdout)
    outcomes = {s["name"]: s for s in report["scenarios"]}
    assert list(outcomes) == [
        "warm_up",
        "detection",
        "basic_functionality",
        "concurrent_processing",
        "performance:small_model",
        "performance:medium_model",
        "performance:large_model",
        "error_handling:gpu_overload",
        "error_handling:task_timeout",
    ]
    assert report["passed"] is True and all(s["passed"] for s in report["scenarios"]), report
    assert [g["gpu_id"] for g in report["gpus"]] == ["gpu_0", "gpu_1"]
    assert outcomes["basic_functionality"]["figures"]["relative_error"] < 1e-3
    concurrent = outcomes["concurrent_processing"]["figures"]
    assert concurrent["completed"] == 6 and concurrent["failed"] == 0
    for name in ("small_model", "medium_model", "large_model"):
        per_gpu = outcomes[f"performance:{name}"]["figures"]["per_gpu"]
        assert sorted(per_gpu) == ["0", "1"] and all(p["gflops"] > 0 for p in per_gpu.values())
    overload = outcomes["error_handling:gpu_overload"]["figures"]
    assert overload["declared_mb_total"] > overload["pool_mb"]  # it really asked for more than the pool has
    assert overload["completed"] + sum(overload["clear_errors"].values()) == 5
    timeout = outcomes["error_handling:task_timeout"]["figures"]
    assert timeout["timeout_s"] == 3 and "exceeded its timeout" in timeout["error"]


def test_a_failing_scenario_fails_the_run(gpu_cluster):
    """On the shared cluster (timeout 300 s) a 0.1 s 'timeout' task just completes: the scenario fails."""
    data = {
        "detection": {"enabled": True},
        "basic_functionality": {"enabled": False},
        "concurrent_processing": {"enabled": False},
        "performance": {"enabled": False},
        "error_handling": {"scenarios": [{"name": "task_timeout", "input_size": 8, "output_size": 8, "duration": 0.1}]},
    }
    config = local_config({**yaml.safe_load((REPO / "cluster.yaml").read_text()), "test": data})
    with Client(gpu_cluster.scheduler_address, timeout=30) as client:
        outcomes = Selftest(client, config).run()
    verdicts = {o.name: o.passed for o in outcomes}
    assert verdicts == {
        "warm_up": True,
        "detection": True,
        "basic_functionality": None,
        "concurrent_processing": None,
        "performance": None,
        "error_handling:task_timeout": False,
    }, outcomes
    failed = outcomes[-1]
    assert "without being timed out (gpu.workload.timeout=300s)" in failed.summary
    assert passed(outcomes) is False


def test_selftest_cannot_reach_a_scheduler_says_so():
    import subprocess

    done = subprocess.run(
        [*cli_command(), "selftest", "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
    )
    assert done.returncode != 0
    assert "cannot reach the scheduler at tcp://127.0.0.1:9" in done.stderr
    assert "Traceback" not in done.stderr


def test_gpu_check_script_and_its_config_are_valid():
    """``make gpu-check``'s config and shell syntax (tests/test_gpu_check.py runs the script's dry run)."""
    import subprocess

    config = build_config(yaml.safe_load((REPO / "scripts" / "gpu-check.yaml").read_text()))
    assert config.cluster.simulate is None  # real GPUs
    timeout = next(s for s in config.test.error_handling.scenarios if s.name == "task_timeout")
    assert timeout.duration > config.gpu.workload.timeout  # the scenario's task must outlast the timeout
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu-check.sh")], capture_output=True).returncode == 0
