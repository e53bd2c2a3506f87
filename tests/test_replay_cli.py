"""``altlas-dask replay``: the strategy table, JSON, the CDF plot, determinism and clear errors."""

from __future__ import annotations

import json

from conftest import altlas


def test_replay_of_the_shipped_trace_is_deterministic(tmp_path):
    args = ("replay", "heterogeneous", "-s", "round_robin", "-s", "random", "--seed", "3", "--json")
    first = altlas(*args, "--out", str(tmp_path / "a"))
    second = altlas(*args, "--out", str(tmp_path / "b"))
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    report = json.loads(first.stdout)
    assert [s["strategy"] for s in report["strategies"]] == ["round_robin", "random"]
    rr = report["strategies"][0]
    assert rr["done"] == rr["tasks"] == 283 and rr["failed"] == 0
    assert 0 < rr["latency_s"]["p50"] <= rr["latency_s"]["p95"] <= rr["latency_s"]["p99"]
    assert set(rr["p95_by_task_type_s"]) == {"embedding", "image_segmentation", "text_generation"}
    assert json.loads((tmp_path / "a" / "replay.json").read_text()) == report
    assert (tmp_path / "a" / "replay-cdf.png").read_bytes()[:4] == b"\x89PNG"


def test_replay_prints_a_table_per_strategy(tmp_path):
    out = altlas("replay", "pipeline", "--all", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    for name in ("round_robin", "least_loaded", "memory_optimized", "hybrid"):
        assert f"Strategy {name}" in out.stdout
    assert "done / failed" in out.stdout and "p95 ms" in out.stdout and "pipeline" in out.stdout


def test_replay_errors_name_what_is_wrong(tmp_path):
    missing = altlas("replay", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path))
    assert missing.returncode != 0 and "no trace file" in missing.stderr and "Traceback" not in missing.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": 0, "id": "a", "work_gflop": 1, "priority": 9}\n')
    out = altlas("replay", str(bad), "--out", str(tmp_path))
    assert out.returncode != 0 and "field 'priority' = 9" in out.stderr and "Traceback" not in out.stderr
    out = altlas("replay", "heterogeneous", "-s", "fastest", "--out", str(tmp_path))
    assert out.returncode != 0 and "unknown strategy 'fastest'" in out.stderr


def test_replay_of_what_the_cluster_ran_from_its_accounting_database(tmp_path):
    from altlas_dask.accounting.store import AccountingStore
    from altlas_dask.simulation.trace import read_trace

    store = AccountingStore(tmp_path / "altlas.sqlite", 0.01)
    for i in range(20):
        store.record_task({
            "key": f"k{i}", "user": "alice" if i % 2 else "bob", "gpu": i % 4, "strategy": "least_loaded",
            "reason": "", "status": "completed", "priority": 3, "task_type": "embedding", "memory_mb": 512,
            "submitted": 1_700_000_000.0 + i * 0.1, "started": None, "finished": None, "gpu_seconds": 0.02,
            "attempts": 1, "error": None,
        })  # fmt: skip
    store.close()
    out = altlas(
        "replay", str(tmp_path / "altlas.sqlite"), "--since", "1700000000.5", "-s", "round_robin", "--json",
        "--out", str(tmp_path), "--write-trace", str(tmp_path / "ran.jsonl"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)["strategies"][0]
    assert report["done"] == 15 and set(report["user_gpu_s"]) == {"alice", "bob"}
    trace = read_trace(tmp_path / "ran.jsonl")
    assert [t.id for t in trace] == [f"k{i}" for i in range(5, 20)] and trace[0].t == 0.0
    missing = altlas("replay", str(tmp_path / "none.sqlite"), "--out", str(tmp_path))
    assert missing.returncode != 0 and "no accounting database" in missing.stderr
