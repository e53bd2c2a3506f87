"""``altlas-dask submit`` as a subprocess against the shared cluster: progress, summary, bad input."""

from __future__ import annotations

import json
import re

import pytest
from conftest import altlas, table_rows

from altlas_dask.client.gpu_client import Client
from altlas_dask.client.runs import parse_params, percentile
from altlas_dask.client.workloads import WORKLOADS
from altlas_dask.ops.launcher import GpuCluster

NOWHERE = "tcp://127.0.0.1:9"  # nothing listens: bad input must be refused before any connection


def test_submit_prints_per_gpu_counts_and_latency(gpu_cluster: GpuCluster) -> None:
    done = altlas(
        "submit",
        "--workload",
        "modelled",
        "--count",
        "12",
        "--batch-size",
        "2",
        "--strategy",
        "round_robin",
        "--priority",
        "4",
        "--user",
        "cli-submitter",
        "--param",
        "work_gflop=5",
        "--param",
        "memory_mb=256",
        "--scheduler",
        gpu_cluster.scheduler_address,
    )
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    per_gpu, total = rows[:-1], rows[-1]
    assert {row["GPU"] for row in per_gpu} == {"0", "1", "2", "3"}  # round_robin over 6 tasks reaches every GPU
    names = {str(g.id): g.name for g in gpu_cluster.gpus}
    assert all(row["Name"] == names[row["GPU"]] for row in per_gpu)
    assert sum(int(row["Tasks"]) for row in per_gpu) == 6
    assert sum(int(row["Calls"]) for row in per_gpu) == 12
    assert total["GPU"] == "all" and total["Tasks"] == "6" and total["Calls"] == "12"
    assert 0 < int(total["p50 ms"]) <= int(total["p95 ms"])
    assert re.search(r"12 calls of modelled in 6 tasks: 6 completed, 0 failed, 0 cancelled in [\d.]+ s", done.stdout)
    assert "12/12" in done.stderr  # the progress bar ends full
    with Client(gpu_cluster.scheduler_address, gpu_defaults={"user": "cli-submitter"}, timeout=30) as client:
        tasks = client.tasks()
    assert len(tasks) == 6
    assert {(t["status"], t["priority"], t["strategy"], t["memory_mb"]) for t in tasks} == {
        ("completed", 4, "round_robin", 256)
    }


def test_submit_json_summary(gpu_cluster: GpuCluster) -> None:
    done = altlas(
        "submit",
        "--workload",
        "modelled",
        "--count",
        "5",
        "--user",
        "cli-json",
        "--param",
        "work_gflop=1",
        "--scheduler",
        gpu_cluster.scheduler_address,
        "--json",
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["calls"], summary["tasks"], summary["completed"], summary["failed"]) == (5, 5, 5, 0)
    assert sum(row["calls"] for row in summary["per_gpu"]) == 5
    assert 0 < summary["p50_latency_s"] <= summary["p95_latency_s"] <= summary["wall_s"] + 1e-6
    assert summary["throughput"] > 0 and summary["errors"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workload", "nope"], "unknown workload 'nope'; choose one of"),
        (["--workload", "modelled", "--strategy", "least_loded"], "'least_loded' is not a known strategy (choose"),
        (["--workload", "modelled", "--strategy", "least_loded"], "did you mean 'least_loaded'?"),
        (["--workload", "modelled", "--priority", "9"], "gpu_options.priority"),
        (["--workload", "modelled", "--param", "speed=3"], "unknown: 'speed'"),
        (["--workload", "modelled", "--param", "work_gflop=lots"], "parameter 'work_gflop' must be a float"),
        (["--workload", "modelled", "--param", "work_gflop"], "--param takes key=value"),
        (["--workload", "modelled", "--count", "0"], "--count and --batch-size must be >= 1"),
        (["--workload", "modelled", "--user", "two words"], "gpu_options.user"),
    ],
)
def test_submit_bad_input_is_one_line_exit_2(args: list[str], message: str) -> None:
    done = altlas("submit", *args, "--scheduler", NOWHERE, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_submit_unreachable_scheduler_is_one_line() -> None:
    done = altlas("--connect-timeout", "0.5", "submit", "--workload", "modelled", "--scheduler", NOWHERE, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach the scheduler at {NOWHERE}" in lines[0], done.stderr
    assert "after 0.5 s" in lines[0], "--connect-timeout is the wait"


def test_params_are_typed_like_the_workload_defaults() -> None:
    modelled = WORKLOADS["modelled"]
    assert parse_params(modelled, ["work_gflop=2", "memory_mb= 64"]) == {"work_gflop": 2.0, "memory_mb": 64}
    assert parse_params(WORKLOADS["generate"], ["seed=7", "text=a=b"]) == {"seed": 7, "text": "a=b"}
    assert parse_params(WORKLOADS["generate"], ["seed=none"]) == {"seed": None}
    with pytest.raises(ValueError, match="must be a int"):
        parse_params(WORKLOADS["modelled"], ["memory_mb=1.5"])


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile(list(range(101)), 95) == 95


def test_submit_show_results_prints_the_generated_text(gpu_cluster: GpuCluster) -> None:
    args = ["submit", "--workload", "generate", "--count", "2", "--user", "cli-results", "--param", "text=Once"]
    done = altlas(*args, "--show-results", "5", "--scheduler", gpu_cluster.scheduler_address)
    assert done.returncode == 0, done.stderr
    texts = re.findall(r"^generate-[0-9a-f]{8}-0000([01]): (.+)$", done.stdout, flags=re.MULTILINE)
    assert [n for n, _ in texts] == ["0", "1"] and all(len(text) > 10 for _, text in texts), done.stdout
    as_json = altlas(*args, "--show-results", "1", "--json", "--scheduler", gpu_cluster.scheduler_address)
    results = json.loads(as_json.stdout)["results"]
    assert len(results) == 1 and results[0]["key"].endswith("-00000") and len(results[0]["result"]) > 10
