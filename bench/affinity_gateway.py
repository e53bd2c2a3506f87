"""Affinity through the gateway (issue 23 item 3): the shared-prefix trace as ``POST /predict`` requests, with
and without ``gpu_options.affinity`` routing, on a simulated 4-GPU cluster.

Two gateways, each ``altlas-dask api --start-cluster --simulate 4 --no-warm-up`` (the real CLI: the gateway,
the scheduler with the router, one worker process per virtual GPU; one probe request per GPU loads the model),
both up for the whole run: *with* affinity
(``gpu.multi_gpu.affinity_load_factor`` 1.25, the default) and *without* (0: the router ignores the key). The
requests are those of a ``--share`` of the conversations of the Mooncake window (``mooncake_conversation``,
the replay's shared-prefix trace; all turns of each kept conversation): arrival pattern kept, scaled to
``--rate`` requests/s; each sends its trace
``affinity`` (the conversation) as ``gpu_options.affinity`` to both gateways, with a per-repetition suffix so
every repetition starts cold. A GPU worker that lacks a request's key loads it first, holding the device for
``simulation.affinity_load_s`` (``--load-s``); the request then generates ``--chars`` characters with the
shipped GRU. Latency: from each request's scheduled send (open loop, no coordinated omission) until the
answer with the text (``"wait": 30``). Hit rate: answers whose result says ``warm``.

Run: ``.venv/bin/python bench/affinity_gateway.py [--share 0.2] [--rate 7] [--load-s 0.5] [--reps 3] [--no-write]``
(about 5 minutes on 2 cores).
Writes the ``affinity-gateway-<rate>rps-<load>s`` section of bench/RESULTS.md (one per setting).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx
from common import command, load_average, machine, machine_line, own_cluster, pct, quiet, table, write_section
from load import free_port

from altlas_dask.accounting.api_keys import KeyStore
from altlas_dask.cli.replay import find_trace
from altlas_dask.config import load_config
from altlas_dask.simulation.trace import TraceTask, read_trace

TRACE = "mooncake_conversation"
GPUS = 4
MODES = {"with": "1.25", "without": "0"}  # gpu.multi_gpu.affinity_load_factor
WARM_UP = 40  # requests per gateway before the measured repetitions


@dataclass
class Gateway:
    process: subprocess.Popen
    url: str
    token: str
    log: str  # its output


@dataclass
class Run:
    p50_ms: float
    p95_ms: float
    hit_rate: float
    failed: int


def start_gateway(factor: str, load_s: float) -> Gateway:
    """``altlas-dask api --start-cluster`` with the router's affinity factor ``factor`` (see :func:`wait_up`)."""
    tmp, overrides = own_cluster("altlas-affinity-")
    overrides += [
        f"gpu.multi_gpu.affinity_load_factor={factor}",
        f"simulation.affinity_load_s={load_s}",
    ]
    token = KeyStore(load_config(overrides=overrides, environ={}).accounting.database).create("bench")[1]
    port = free_port()
    script = Path(sys.executable).with_name("altlas-dask")
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "altlas_dask.cli.main"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTLAS_")}
    # --no-warm-up: the probes load the model in a task on each GPU, so both gateways start alike (and before
    # 62c67db the start-up warm-up loaded torch on each worker's event loop, silencing its heartbeats)
    args = [*cli, *(a for o in overrides for a in ("--set", o)), "api", "--start-cluster", "--simulate", str(GPUS)]
    args.append("--no-warm-up")
    with open(f"{tmp}/gateway.log", "wb") as log:  # a file, not a pipe: a full pipe would block its logging
        process = subprocess.Popen([*args, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    return Gateway(process, f"http://127.0.0.1:{port}/api/v1", token, f"{tmp}/gateway.log")


def wait_up(gateway: Gateway) -> None:
    deadline = time.monotonic() + 180
    while not all_gpus_active(gateway):
        if gateway.process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the gateway did not start: {Path(gateway.log).read_text()[-2000:]}")
        time.sleep(0.5)


def probe_each_gpu(gateway: Gateway) -> None:
    """One generation on each GPU (no affinity), waited for: every worker has loaded the model and answers."""
    headers = {"Authorization": f"Bearer {gateway.token}"}
    for gpu in range(GPUS):
        body = {"text": "probe", "max_length": 4, "gpu_options": {"specific_gpu_id": gpu}, "wait": 60}
        r = httpx.post(gateway.url + "/predict", json=body, headers=headers, timeout=120)
        for _ in range(3):  # the first task on a worker imports torch and loads the model: slow on a busy machine
            if r.status_code != 200 or r.json().get("status") in ("completed", "failed", "cancelled"):
                break
            r = httpx.get(f"{gateway.url}/task/{r.json()['task_id']}?wait=60", headers=headers, timeout=120)
        if r.status_code != 200 or r.json().get("status") != "completed":
            raise SystemExit(f"GPU {gpu} did not answer a probe: HTTP {r.status_code} {r.text[:500]}")


def all_gpus_active(gateway: Gateway) -> bool:
    try:
        r = httpx.get(gateway.url + "/gpus", headers={"Authorization": f"Bearer {gateway.token}"}, timeout=5)
    except httpx.HTTPError:
        return False
    gpus = r.json().get("gpus", []) if r.status_code == 200 else []
    return len(gpus) == GPUS and all(g["status"] == "active" for g in gpus)


def sampled(share: float, rate: float) -> list[TraceTask]:
    """Every request of a ``share`` of the window's conversations (chosen by a stable hash of the key, so each
    kept conversation keeps all its turns: a conversation's next turn comes ~250 requests later), their
    arrival times scaled to ``rate`` requests/s (pattern kept)."""
    tasks = sorted((t for t in read_trace(find_trace(TRACE)) if isinstance(t, TraceTask)), key=lambda t: t.t)
    kept = [t for t in tasks if zlib.crc32(t.affinity.encode()) % 1000 < share * 1000]
    start, span = kept[0].t, kept[-1].t - kept[0].t
    factor = (len(kept) / rate) / span if span else 0.0
    return [t.model_copy(update={"t": (t.t - start) * factor}) for t in kept]


async def replay_once(gateway: Gateway, tasks: list[TraceTask], suffix: str, chars: int) -> Run:
    """Every request at its time (open loop); latencies from the scheduled send."""
    headers = {"Authorization": f"Bearer {gateway.token}"}
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=60, limits=limits) as client:
        t0 = time.perf_counter() + 0.2

        async def one(i: int, task: TraceTask) -> tuple[float, bool | None]:
            due = t0 + task.t
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            body = {
                "text": f"Turn {i}: ",
                "max_length": chars,
                "seed": i,
                "gpu_options": {"affinity": f"{task.affinity}{suffix}"},
                "wait": 30,
            }
            r = await client.post("/predict", json=body)
            latency = time.perf_counter() - due
            answer = r.json() if r.status_code == 200 else {}
            if answer.get("status") != "completed":
                print(f"request {i}: HTTP {r.status_code}: {r.text[:300]}", file=sys.stderr, flush=True)
                return latency, None
            return latency, bool(answer["result"]["warm"])

        outcomes = await asyncio.gather(*(one(i, t) for i, t in enumerate(tasks)))
    done = [(lat, warm) for lat, warm in outcomes if warm is not None]
    lat_ms = [lat * 1000 for lat, _ in done]
    return Run(pct(lat_ms, 50), pct(lat_ms, 95), sum(w for _, w in done) / max(len(done), 1), len(tasks) - len(done))


def spread(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--share", type=float, default=0.2, help="share of the window's conversations replayed")
    p.add_argument("--rate", type=float, default=7.0, help="mean requests per second (arrival pattern kept)")
    p.add_argument("--chars", type=int, default=8, help="characters each request generates")
    p.add_argument("--load-s", type=float, default=None, help="simulation.affinity_load_s (default: the config's)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    quiet()
    load_s = args.load_s if args.load_s is not None else load_config(environ={}).simulation.affinity_load_s
    tasks = sampled(args.share, args.rate)
    repeats = len(tasks) - len({t.affinity for t in tasks})  # requests whose conversation came earlier
    info, load_start, wall = machine(), load_average(), time.monotonic()
    gateways = {mode: start_gateway(factor, load_s) for mode, factor in MODES.items()}
    runs: dict[str, list[Run]] = {mode: [] for mode in MODES}
    try:
        for gateway in gateways.values():
            wait_up(gateway)
        for gateway in gateways.values():
            probe_each_gpu(gateway)
        for gateway in gateways.values():  # first requests on a fresh cluster: not measured
            asyncio.run(replay_once(gateway, tasks[:WARM_UP], "-warm-up", args.chars))
        for rep in range(args.reps):
            order = list(MODES) if rep % 2 == 0 else list(reversed(MODES))
            for mode in order:
                run = asyncio.run(replay_once(gateways[mode], tasks, f"-r{rep}", args.chars))
                runs[mode].append(run)
                print(f"rep {rep + 1} {mode}: {run}; load average {load_average()}", flush=True)
    finally:
        for gateway in gateways.values():
            gateway.process.terminate()
        for gateway in gateways.values():
            gateway.process.wait(timeout=60)
            print(f"gateway log: {gateway.log}", file=sys.stderr)
    rows = [
        [
            mode,
            spread([r.hit_rate * 100 for r in rs], ".1f"),
            spread([r.p50_ms for r in rs], ".0f"),
            spread([r.p95_ms for r in rs], ".0f"),
            sum(r.failed for r in rs),
        ]
        for mode, rs in runs.items()
    ]
    change = statistics.median(r.p95_ms for r in runs["with"]) / statistics.median(r.p95_ms for r in runs["without"])
    body = "\n".join(
        [
            "## Affinity through the gateway (`bench/affinity_gateway.py`, issue 23)",
            "",
            f"Command: `{command('affinity_gateway.py', argv)}`  ",
            f"Machine: {machine_line(info)}  ",
            f"Load average (1 min) at start / end: {load_start} / {load_average()}; wall time "
            f"{time.monotonic() - wall:.0f} s (a machine shared with other jobs).",
            "",
            f"Trace `{TRACE}`: every request of {args.share:.0%} of its conversations (a stable hash of the key), "
            f"{len(tasks)} requests at {args.rate:g} requests/s (arrival pattern kept): "
            f"{repeats} of them continue a conversation seen earlier in the window (the most a router can hit: "
            f"{repeats / len(tasks):.0%}). Two gateways (`altlas-dask api --start-cluster --simulate {GPUS}`, a probe "
            "request per GPU first), both up throughout: *with* `gpu.multi_gpu.affinity_load_factor` 1.25, "
            "*without* 0; every request "
            f"`POST /predict` with `gpu_options.affinity` = its conversation, {args.chars} characters, "
            f'`"wait": 30`. A GPU worker lacking the key loads it first (`simulation.affinity_load_s` = '
            f"{load_s:g} s of held device: if every request missed, the loads alone would keep the {GPUS} GPUs "
            f"{args.rate * load_s / GPUS:.0%} busy). After {WARM_UP} warm-up requests per gateway, {args.reps} "
            "repetitions, modes alternating (ABBA), each repetition with fresh keys; median (min-max) over them.",
            "",
            table(["mode", "hit rate %", "p50 ms", "p95 ms", "failed"], rows),
            "",
            f"p95 with / without: {change:.2f}.",
        ]
    )
    print(body)
    if not args.no_write:
        write_section(f"affinity-gateway-{args.rate:g}rps-{load_s:g}s", body)  # one section per setting


if __name__ == "__main__":
    main()
