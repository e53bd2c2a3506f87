"""The steps of ``scripts/gpu-check.sh`` that are more than one command; each prints what it saw and exits
non-zero when the check fails.

  fields GPUS_JSON [--simulated]     every NVML field of ``altlas-dask gpus --json`` has a value or is `unknown`
  workers SCHEDULER N                wait until N GPU workers are bound at SCHEDULER; print them
  gateway URL KEY SCHEDULER DEVICE   the shipped model through POST /predict; every worker's model on DEVICE
  router-vs-dask [--simulate N]      router vs plain Dask on the same GPU(s): round trip median, throughput
  summary OUT [--dry]                OUT/steps.tsv -> OUT/summary.json + OUT/summary.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# NVML-derived fields of GpuState.to_api(): (path, the GpuState field `unknown_fields` names, a real value?)
NVML_FIELDS = [
    (("name",), "name", lambda v: bool(v)),
    (("uuid",), "uuid", lambda v: str(v).startswith(("GPU-", "MIG-"))),
    (("compute_capability",), "compute_capability", lambda v: v not in ("", "0.0")),
    (("memory", "total"), "memory_total_mb", lambda v: v > 0),
    (("memory", "used"), "memory_used_mb", lambda v: v >= 0),
    (("utilization",), "utilization_gpu", lambda v: 0 <= v <= 100),
    (("memory_utilization",), "utilization_memory", lambda v: 0 <= v <= 100),
    (("temperature",), "temperature_c", lambda v: v > 0),
    (("power", "usage"), "power_usage_w", lambda v: v > 0),
    (("power", "limit"), "power_limit_w", lambda v: v > 0),
]


def fields(args: argparse.Namespace) -> int:
    gpus = json.loads(Path(args.gpus_json).read_text())["gpus"]
    failures = [] if gpus else ["no GPU listed"]
    for gpu in gpus:
        if gpu["simulated"] != args.simulated:
            failures.append(f"{gpu['gpu_id']}: simulated={gpu['simulated']} (NVML did not answer?)")
        unknown = set(gpu.get("unknown_fields", ()))
        for path, field, plausible in NVML_FIELDS:
            value: Any = gpu
            for key in path:
                value = value[key]
            shown = "unknown" if field in unknown else value
            ok = field in unknown or plausible(value)
            print(f"{gpu['gpu_id']:<7} {'.'.join(path):<20} {shown!s:<45} {'ok' if ok else 'IMPLAUSIBLE'}")
            if not ok:
                failures.append(f"{gpu['gpu_id']}: {'.'.join(path)}={value!r} is neither plausible nor unknown")
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


def workers(args: argparse.Namespace) -> int:
    from distributed import Client

    from altlas_dask.client.live import live_gpus

    with Client(args.scheduler, timeout=30, set_as_default=False) as client:
        deadline = time.monotonic() + args.timeout
        while True:
            bound = [g for g in live_gpus(client) if g.worker]
            if len(bound) >= args.count or time.monotonic() > deadline:
                break
            time.sleep(1)  # a shell step's poll of another process; bounded by --timeout
    for gpu in bound:
        print(f"gpu {gpu.id} {gpu.uuid} {gpu.name!r} on {gpu.worker} simulated={gpu.simulated}")
    print(f"{len(bound)} GPU worker(s) bound, {args.count} wanted")
    return 0 if len(bound) >= args.count else 1


def gateway(args: argparse.Namespace) -> int:
    import httpx
    from distributed import Client

    from altlas_dask.model import warm_up

    body = {"text": "The GPU check ", "max_length": 48, "seed": 3, "wait": 60}
    headers = {"Authorization": f"Bearer {args.key}"}
    deadline = time.monotonic() + 90  # `up` starts the gateway after its cluster
    while not _answers(f"{args.url}/health") and time.monotonic() < deadline:
        time.sleep(0.5)
    answer = httpx.post(f"{args.url}/predict", json=body, headers=headers, timeout=150).json()
    print(json.dumps(answer, indent=2))
    with Client(args.scheduler, timeout=30, set_as_default=False) as client:
        devices = client.run(warm_up)
    print("model device per worker:", devices)
    failures = []
    if answer.get("status") != "completed":
        failures.append(f"POST /predict answered status {answer.get('status')!r}")
    if not devices or set(devices.values()) != {args.device}:
        failures.append(f"the model is not on {args.device!r} on every worker: {devices}")
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def noop(x: Any = None) -> Any:
    return x


def router_vs_dask(args: argparse.Namespace) -> int:
    """Two clusters on the same GPU(s), one with the router, one plain Dask; alternating, medians."""
    import distributed

    from altlas_dask.config import load_config
    from altlas_dask.ops.launcher import start_cluster

    overrides = ["cluster.scheduler_address=127.0.0.1:0", "cluster.dashboard_address=127.0.0.1:0"]
    config = load_config(args.config, overrides=[*overrides, "accounting.database=:memory:"])
    routed = start_cluster(config, simulate=args.simulate)
    plain = start_cluster(config, simulate=args.simulate, router=False)
    router_client, dask_client = routed.client(), distributed.Client(plain.cluster)
    submit = {
        "router": lambda i: router_client.submit(noop, i, pure=False, gpu_options={"task_type": "noop"}),
        "plain Dask": lambda i: dask_client.submit(noop, i, pure=False, resources={"GPU": 1}),
    }
    rates: dict[str, list[float]] = {name: [] for name in submit}
    trips: dict[str, list[float]] = {name: [] for name in submit}
    try:
        for name in submit:
            distributed.wait([submit[name](i) for i in range(50)])  # warm-up
        for rep in range(args.reps):
            for name in submit if rep % 2 == 0 else reversed(list(submit)):
                start = time.perf_counter()
                distributed.wait([submit[name](i) for i in range(args.tasks)])
                rates[name].append(args.tasks / (time.perf_counter() - start))
        for i in range(args.roundtrips):
            for name in submit if i % 2 == 0 else reversed(list(submit)):
                start = time.perf_counter()
                submit[name](i).result()
                trips[name].append((time.perf_counter() - start) * 1e3)
        gpus = [g.name for g in routed.gpus]
    finally:
        dask_client.close()
        routed.close()
        plain.close()
    result = {
        "gpus": gpus,
        "simulated": args.simulate is not None,
        "tasks": args.tasks,
        "reps": args.reps,
        "roundtrips": args.roundtrips,
        "throughput_tasks_per_s": {name: statistics.median(v) for name, v in rates.items()},
        "roundtrip_median_ms": {name: statistics.median(v) for name, v in trips.items()},
    }
    result["ratios"] = {
        "throughput_router_over_dask": result["throughput_tasks_per_s"]["router"]
        / result["throughput_tasks_per_s"]["plain Dask"],
        "roundtrip_router_over_dask": result["roundtrip_median_ms"]["router"]
        / result["roundtrip_median_ms"]["plain Dask"],
    }
    print(json.dumps(result, indent=2))
    Path(args.json_file).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def summary(args: argparse.Namespace) -> int:
    """``steps.tsv`` (name, rc, seconds, note per line, written by the shell script) -> JSON + markdown."""
    out = Path(args.out)
    steps = []
    for line in (out / "steps.tsv").read_text().splitlines():
        name, rc, seconds, note = line.split("\t")
        steps.append({"step": name, "rc": int(rc), "seconds": int(seconds), "note": note})
    report: dict[str, Any] = {"dry_run": args.dry, "ok": all(s["rc"] == 0 for s in steps), "steps": steps}
    for name in ("gpus.json", "selftest.json", "router-vs-dask.json"):
        if (out / name).exists():
            report[name.removesuffix(".json")] = json.loads((out / name).read_text())
    (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# GPU check {'(DRY RUN: simulated pool, CUDA steps faked or skipped)' if args.dry else '(real GPUs)'}",
        "",
        "| step | result | seconds | note |",
        "| --- | --- | --- | --- |",
    ]
    for step in steps:
        result = "ok" if step["rc"] == 0 else f"FAILED (rc {step['rc']})"
        lines.append(f"| {step['step']} | {result} | {step['seconds']} | {step['note']} |")
    bench = report.get("router-vs-dask")
    if bench:
        ratios = bench["ratios"]
        lines += [
            "",
            f"Router vs plain Dask on {', '.join(bench['gpus'])}: throughput ratio "
            f"{ratios['throughput_router_over_dask']:.2f} ({bench['tasks']:,} no-op tasks, median of {bench['reps']}), "
            f"round-trip median ratio {ratios['roundtrip_router_over_dask']:.2f} "
            f"({bench['roundtrip_median_ms']['router']:.1f} vs {bench['roundtrip_median_ms']['plain Dask']:.1f} ms).",
        ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if report["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fields")
    p.add_argument("gpus_json")
    p.add_argument("--simulated", action="store_true", help="the dry run: the simulated pool is expected")
    p.set_defaults(run=fields)
    p = sub.add_parser("workers")
    p.add_argument("scheduler")
    p.add_argument("count", type=int)
    p.add_argument("--timeout", type=float, default=120)
    p.set_defaults(run=workers)
    p = sub.add_parser("gateway")
    for name in ("url", "key", "scheduler", "device"):
        p.add_argument(name)
    p.set_defaults(run=gateway)
    p = sub.add_parser("router-vs-dask")
    p.add_argument("--config", default=None)
    p.add_argument("--simulate", type=int, default=None)
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--roundtrips", type=int, default=100)
    p.add_argument("--json-file", required=True)
    p.set_defaults(run=router_vs_dask)
    p = sub.add_parser("summary")
    p.add_argument("out")
    p.add_argument("--dry", action="store_true")
    p.set_defaults(run=summary)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
