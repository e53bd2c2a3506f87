"""Load test of the REST gateway on loopback: steps of 100, 500 and 1,000 requests/s against the modelled workload.

Set-up (all on this machine): a simulated 4-GPU cluster (scheduler in this process, one worker
process per virtual GPU), the gateway as its own process (``altlas-dask api``, uvicorn, one event
loop), and an open-loop load generator in a third process: raw HTTP/1.1 over keep-alive loopback
connections, requests sent on a fixed schedule whether or not earlier ones have answered.

Each request is ``POST /api/v1/route`` for the ``modelled`` workload (a ``work_gflop`` kernel, by
default 1 GFLOP = 0.5 ms on a virtual A100). The gateway answers once the router has placed the
task (or queued it), so a response's latency is the gateway + routing overhead: HTTP parsing,
auth, validation, ``Client.submit``, the scheduler's ``update_graph`` and the router's decision,
and the router's pushed record of the placement. It does not include running the task. Latency is measured from each
request's *scheduled* send time, so time spent waiting for a free connection counts too (no
coordinated omission). Tasks keep running after their response; between steps the script waits
until the router has finished them all.

Run: ``.venv/bin/python bench/load.py [--rates 100,500,1000] [--duration 10] [--no-write]``.
Writes the ``load`` section of bench/RESULTS.md (replacing only that section).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
TARGET_RATE, TARGET_P99_MS = 1000, 50.0
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

from common import machine, machine_line, own_cluster, write_section  # noqa: E402  (bench/common.py, beside this script)

# -- the load generator (runs in its own process) ----------------------------------------------------------


async def _open(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split(b" ", 2)[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _generate(
    host: str, port: int, request: bytes, rate: float, duration: float, connections: int, timeout: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await _open(host, port))
    latencies: list[float] = []
    service: list[float] = []
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    count = int(rate * duration)
    start = loop.time() + 0.2

    async def one(i: int) -> None:
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = await pool.get()
        sent = loop.time()
        try:
            reader, writer = conn
            writer.write(request)
            status, body = await asyncio.wait_for(_read_response(reader), timeout)
            done = loop.time()
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append(done - scheduled)
                service.append(done - sent)
                answer = json.loads(body).get("status", "?")
                outcomes[answer] = outcomes.get(answer, 0) + 1
            else:
                errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
        except Exception as exc:  # a timeout or a dropped connection: count it, open a fresh one
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            try:
                conn[1].close()
                conn = await _open(host, port)
            except OSError:
                pass
        finally:
            pool.put_nowait(conn)

    tasks = [asyncio.ensure_future(one(i)) for i in range(count)]
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    while not pool.empty():
        pool.get_nowait()[1].close()
    return {
        "sent": count,
        "ok": len(latencies),
        "elapsed": elapsed,
        "latencies": latencies,
        "service": service,
        "statuses": statuses,
        "errors": errors,
        "outcomes": outcomes,
    }


def generator_process(args: tuple, out: Any) -> None:
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF)
    result = asyncio.run(_generate(*args))
    after = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    out.send(result)
    out.close()


# -- orchestration ---------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def table(headers: list[str], rows: list[list[Any]]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="100,500,1000", help="comma-separated request rates (req/s)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per step")
    p.add_argument("--gpus", type=int, default=4)
    p.add_argument("--work-gflop", type=float, default=1.0, help="modelled kernel size per request")
    p.add_argument("--connections", type=int, default=256, help="keep-alive connections of the generator")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before a request counts as an error")
    p.add_argument("--gateway-args", default="", help="extra options for `altlas-dask api`, e.g. '--placement-wait 0'")
    p.add_argument("--no-write", action="store_true", help="print the table, do not touch RESULTS.md")
    args = p.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]

    import logging
    import warnings

    import psutil

    warnings.filterwarnings("ignore")
    for name in ("distributed", "altlas_dask", "scheduler_plugins", "tornado", "bokeh"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from distributed import Client

    from altlas_dask.accounting.api_keys import KeyStore
    from altlas_dask.config import load_config
    from altlas_dask.ops.launcher import start_cluster

    _, overrides = own_cluster("altlas-load-")
    overrides += [
        "quotas.defaults.concurrent_requests=100000",
    ]
    config = load_config(overrides=overrides, environ={})
    wall = time.monotonic()
    load_before = os.getloadavg()[0]
    cluster = start_cluster(config, simulate=args.gpus, timeout=120)
    token = KeyStore(config.accounting.database).create("loadtest")[1]
    port = free_port()
    script = Path(sys.executable).with_name("altlas-dask")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "altlas_dask.cli.main"]
    set_args = [a for o in overrides for a in ("--set", o)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTLAS_")}
    gateway = subprocess.Popen(
        [*cmd, *set_args, "api", "--scheduler", cluster.scheduler_address, "--port", str(port), "--no-warm-up"]
        + shlex.split(args.gateway_args),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    body = json.dumps({"model_id": "modelled", "payload": {"work_gflop": args.work_gflop, "memory_mb": 0}}).encode()
    request = (
        f"POST /api/v1/route HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    client = Client(cluster.scheduler_address, timeout=30)
    rows, notes = [], []
    summary: list[tuple[float, ...]] = []
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if gateway.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the gateway did not start: {gateway.stderr.read()[-2000:]}")
            time.sleep(0.2)
        worker_pids = [w.process.pid for w in cluster.cluster.workers.values() if getattr(w, "process", None)]
        worker_pids = [p for p in worker_pids if p]
        ctx = mp.get_context("spawn")
        steps = [(min(rates[0], 50.0), 2.0, True)] + [(r, args.duration, False) for r in rates]  # warm-up first
        for rate, duration, warm_up in steps:
            parent, child = ctx.Pipe(duplex=False)
            gen_args = ("127.0.0.1", port, request, rate, duration, min(args.connections, int(rate) + 8), args.timeout)
            cpu0 = {
                "gateway": cpu_seconds([gateway.pid]),
                "scheduler": psutil.Process().cpu_times().user + psutil.Process().cpu_times().system,
                "workers": cpu_seconds(worker_pids),
            }
            t0 = time.monotonic()
            proc = ctx.Process(target=generator_process, args=(gen_args, child))
            proc.start()
            result = parent.recv()
            proc.join()
            span = time.monotonic() - t0
            cpu1 = {
                "gateway": cpu_seconds([gateway.pid]),
                "scheduler": psutil.Process().cpu_times().user + psutil.Process().cpu_times().system,
                "workers": cpu_seconds(worker_pids),
            }
            drain_start = time.monotonic()
            while client.run_on_scheduler(_tracked) > 0 and time.monotonic() - drain_start < 120:
                time.sleep(0.2)
            drain = time.monotonic() - drain_start
            if warm_up:
                continue
            lat = [x * 1000 for x in result["latencies"]]
            svc = [x * 1000 for x in result["service"]]
            errors = result["sent"] - result["ok"]
            achieved = result["ok"] / result["elapsed"]
            cpu = {k: 100 * (cpu1[k] - cpu0[k]) / span for k in cpu0}
            total_cpu = sum(cpu.values()) + 100 * result["cpu_s"] / span
            per_request = 10 * total_cpu / achieved if achieved else float("nan")  # ms of CPU per answered request
            summary.append((rate, achieved, total_cpu, per_request, pct(lat, 99), result["sent"] - result["ok"]))
            held = rate >= TARGET_RATE and achieved >= 0.98 * rate and pct(lat, 99) < TARGET_P99_MS and errors == 0
            rows.append(
                [
                    f"{rate:g}",
                    f"{duration:g}",
                    result["sent"],
                    f"{achieved:.0f}",
                    errors,
                    f"{pct(lat, 50):.1f}",
                    f"{pct(lat, 95):.1f}",
                    f"{pct(lat, 99):.1f}",
                    f"{max(lat) if lat else float('nan'):.0f}",
                    f"{pct(svc, 99):.1f}",
                    ", ".join(f"{k} {v}" for k, v in sorted(result["outcomes"].items())),
                    f"{cpu['gateway']:.0f}% / {cpu['scheduler']:.0f}% / {cpu['workers']:.0f}% / "
                    f"{100 * result['cpu_s'] / span:.0f}%",
                    f"{per_request:.1f}",
                    f"{drain:.1f}",
                    ("met" if held else "**missed**") if rate >= TARGET_RATE else "-",
                ]
            )
            if result["errors"]:
                notes.append(f"{rate:g} req/s errors: {result['errors']}")
            print(table(HEADERS, [rows[-1]]).splitlines()[-1], flush=True)
    finally:
        client.close()
        gateway.terminate()
        try:
            gateway.wait(timeout=30)
        except subprocess.TimeoutExpired:
            gateway.kill()
        cluster.close()
    text = table(HEADERS, rows)
    print(text)
    if args.no_write:
        return
    command = " ".join([".venv/bin/python", "bench/load.py", *(shlex.quote(a) for a in (argv or sys.argv[1:]))])
    BR = "  "  # a markdown line break
    body_md = f"""## REST gateway load (`bench/load.py`)

Command: `{command}`{BR}
Machine: {machine_line(machine())}{BR}
Load average (1 min) at start / end: {load_before:.2f} / {os.getloadavg()[0]:.2f}; wall time of the script: \
{time.monotonic() - wall:.0f} s

Open-loop `POST /api/v1/route` (workload `modelled`, {args.work_gflop:g} GFLOP, bearer key) at a fixed rate for
{args.duration:g} s per step, over keep-alive loopback connections, from a separate generator process; the
gateway (`altlas-dask api`, uvicorn, one process) answers once the router has placed or queued the task, so
latency = gateway + routing overhead (not the task's run time), measured from each request's scheduled send time.
{args.gpus} simulated GPUs, one worker process each; the scheduler runs in the benchmark's process. CPU columns:
gateway / scheduler process / all workers / load generator, in % of one core over the step (2 cores = 200%).
Target: {TARGET_RATE:,} req/s held with p99 < {TARGET_P99_MS:g} ms on 2 cores.

{text}

"service p99" = from the actual send (after waiting for a free connection) to the response.
"answers": the `status` field of the 200 responses (accepted = placed on a GPU; queued = held by the router).
"CPU ms / req" = CPU time of all four parts over the step divided by the answered requests.
"drain s" = time after the step until the router had finished every task of the step.
{" ".join(notes)}
{analysis(summary)}
"""
    write_section("load", body_md)
    print(f"wrote the load section of {RESULTS}")


def analysis(summary: list[tuple[float, ...]]) -> str:
    """What the numbers say about the target, in words."""
    if not summary:
        return ""
    rate, achieved, total_cpu, per_request, p99, _ = max(summary, key=lambda r: r[1])
    failed = int(sum(r[5] for r in summary))
    low = min(summary, key=lambda r: r[0])
    ceiling = 200 / total_cpu * achieved if total_cpu else float("nan")
    met = achieved >= 0.98 * TARGET_RATE and p99 < TARGET_P99_MS
    verdict = "The target is met." if met else "**The target is not met.**"
    return (
        f"{verdict} The highest throughput, {achieved:.0f} req/s (offered {rate:g}), used {total_cpu:.0f}% of the "
        f"2 cores for this benchmark's processes ({per_request:.1f} ms of CPU per request; the rest of the machine "
        f"went to other processes, see the load average): with both cores to itself this set-up would top out near "
        f"{ceiling:.0f} req/s. Holding {TARGET_RATE:,} req/s on 2 cores leaves 2 ms of CPU per request for the "
        f"gateway, the scheduler and the workers together. At {low[0]:g} req/s the figure is {low[3]:.1f} ms, but "
        "it includes the cluster's fixed background work (heartbeats, the router's 100 ms poll) spread over fewer "
        "requests; at higher rates it falls because the client's coalescer sends the submissions of one turn as "
        "one graph update, the router pushes placements once per turn, and Dask batches its messages. Where that "
        "time goes (cProfile of the "
        "gateway and of the "
        "scheduler's event loop at 100-200 req/s): the gateway spends about half of its share in "
        "FastAPI/Starlette/uvicorn (h11) and about a third in `Client.submit` and handling the scheduler's "
        "reports; the scheduler spends it in `update_graph`, task transitions and the router's hooks for every "
        "task, plus socket sends; each worker runs the Dask task machinery around a 0.5-2 ms kernel. Below "
        "saturation most of a request's latency is the wait for the scheduler to process the submission "
        "(`update_graph`) and the router's placement, not the gateway's own work. Over saturation the answers "
        "turn from `accepted` to `queued` (the router had not placed the task within the gateway's 1 s "
        "placement wait) and latency grows with the backlog; "
        + (f"{failed} request(s) failed or timed out." if failed else "no request failed.")
    )


HEADERS = [
    "target req/s",
    "s",
    "sent",
    "achieved req/s",
    "errors",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "service p99 ms",
    "answers",
    "CPU gw / sched / workers / gen",
    "CPU ms / req",
    "drain s",
    "1,000 req/s & p99 < 50 ms",
]


def _tracked(dask_scheduler=None) -> int:
    router = dask_scheduler.plugins.get("altlas-router") if dask_scheduler is not None else None
    return len(router.tracked) if router is not None else 0


if __name__ == "__main__":
    main()
