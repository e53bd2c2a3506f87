"""Serving peers: time-to-text of the shipped GRU under the same open-loop load, on this machine, in one run.

Targets, one after the other:

- the gateway (``altlas-dask api`` on a simulated 4-GPU cluster) with dynamic batching ON (the default,
  ``serving.batching.generate``) and OFF, each request ``POST /api/v1/predict`` with ``"wait": 10``, so the
  answer carries the text;
- with ``--ray PYTHON`` (an interpreter with Ray Serve, made by ``make bench-peers`` in ``.venv-ray``):
  Ray Serve plain (one ``char_gru.predict`` per request) and with ``@serve.batch`` (the batch through the
  same one-pass ``char_gru.predict_many`` the gateway uses), both on the same model, see bench/serving_ray.py.

Each request generates ``--chars`` characters (temperature 0.7) from a short prompt. The load generator is
bench/load.py's: open loop, requests on a fixed schedule over keep-alive HTTP/1.1 connections, latency from
each request's *scheduled* send time (no coordinated omission). Time-to-text = until the answer with the text
is in hand. CPU per request = CPU seconds of every process of the target (and of the load generator) over
the step, per answered request.

Run: ``.venv/bin/python bench/serving.py [--rates 25,50,100,150] [--duration 10] [--ray .venv-ray/bin/python]``.
Writes the ``serving`` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

from common import machine, machine_line, own_cluster  # noqa: E402
from load import cpu_seconds, free_port, generator_process, pct, table, write_section  # noqa: E402

P99_TARGET_MS = 500.0
PROMPT = "The meaning of "


def http_request(port: int, path: str, body: dict[str, Any], token: str | None = None) -> bytes:
    data = json.dumps(body).encode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def tree_pids(pid: int) -> list[int]:
    import psutil

    try:
        proc = psutil.Process(pid)
        return [pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.Error:
        return []


def wait_until(check: Callable[[], bool], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.25)


def run_steps(
    name: str,
    port: int,
    request: bytes,
    parts: Callable[[], dict[str, list[int]]],
    args: Any,
    gateway: bool = True,
    grouping: Callable[[], tuple[int, int]] | None = None,
) -> list[dict[str, Any]]:
    """The warm-up, then one step per rate; a row per step."""
    ctx = mp.get_context("spawn")
    rows = []
    steps = [(10.0, 3.0, True)] + [(float(r), args.duration, False) for r in args.rates.split(",")]
    for rate, duration, warm in steps:
        parent, child = ctx.Pipe(duplex=False)
        gen = ("127.0.0.1", port, request, rate, duration, min(512, int(rate * 2) + 16), args.timeout)
        pids = parts()
        grouped0 = grouping() if grouping else (0, 0)
        cpu0, t0 = {part: cpu_seconds(p) for part, p in pids.items()}, time.monotonic()
        load = os.getloadavg()[0]
        proc = ctx.Process(target=generator_process, args=(gen, child))
        proc.start()
        result = parent.recv()
        proc.join()
        span = time.monotonic() - t0
        split = {part: cpu_seconds(p) - cpu0[part] for part, p in pids.items()}
        split["generator"] = result["cpu_s"]
        batches, items = (a - b for a, b in zip(grouping() if grouping else (0, 0), grouped0, strict=True))
        cpu = sum(split.values())
        if warm:
            time.sleep(2)
            continue
        lat = [x * 1000 for x in result["latencies"]]
        # the gateway answers 200 with its status ("completed" once the text is in); Ray Serve answers 200 with
        # the text (its body may come chunked, which the generator does not parse: count the 200s)
        ok = result["outcomes"].get("completed", 0) if gateway else result["statuses"].get(200, 0)
        achieved = ok / result["elapsed"]
        row = {
            "target": name,
            "rate": rate,
            "sent": result["sent"],
            "ok": ok,
            "achieved": achieved,
            "p50": pct(lat, 50),
            "p99": pct(lat, 99),
            "errors": result["sent"] - ok,
            "cpu_ms": 1000 * cpu / ok if ok else float("nan"),
            "cpu_pct": 100 * cpu / span,
            "cpu_split": {part: 1000 * c / ok if ok else float("nan") for part, c in split.items()},
            "batch": items / batches if batches else None,
            "load": load,
        }
        held = row["errors"] == 0 and row["p99"] < P99_TARGET_MS and achieved >= 0.95 * rate
        row["held"] = held
        rows.append(row)
        print(
            f"{name:28s} {rate:6g}/s: {achieved:6.1f}/s ok, p50 {row['p50']:7.1f} ms, p99 {row['p99']:7.1f} ms, "
            f"errors {row['errors']}, CPU {row['cpu_ms']:.1f} ms/request ({split_text(row)}), "
            f"mean batch {row['batch'] or '-'}"
            f"{' (held)' if held else ''}",
            flush=True,
        )
        time.sleep(2)  # let the last answers drain
    return rows


def split_text(row: dict[str, Any]) -> str:
    return " / ".join(f"{part} {ms:.1f}" for part, ms in row["cpu_split"].items())


def gateway_rows(name: str, batching: bool, args: Any) -> list[dict[str, Any]]:
    from altlas_dask.accounting.api_keys import KeyStore
    from altlas_dask.config import load_config
    from altlas_dask.ops.launcher import start_cluster

    _, overrides = own_cluster("altlas-serving-")
    overrides += [
        "quotas.defaults.concurrent_requests=100000",
        f"serving.batching.generate.enabled={str(batching).lower()}",
    ]
    config = load_config(overrides=overrides, environ={})
    cluster = start_cluster(config, simulate=args.gpus, timeout=120)
    token = KeyStore(config.accounting.database).create("serving")[1]
    port = free_port()
    script = Path(sys.executable).with_name("altlas-dask")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "altlas_dask.cli.main"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTLAS_")}
    gateway = subprocess.Popen(
        [*cmd, *[a for o in overrides for a in ("--set", o)], "api", "--scheduler", cluster.scheduler_address]
        + ["--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import httpx

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return gateway.poll() is not None

        wait_until(up, "the gateway")
        workers = [w.process.pid for w in cluster.cluster.workers.values() if getattr(w, "process", None)]
        body = {"text": PROMPT, "max_length": args.chars, "temperature": 0.7, "wait": 10}
        request = http_request(port, "/api/v1/predict", body, token)
        parts = {"gateway": [gateway.pid], "scheduler": [os.getpid()], "workers": [p for p in workers if p]}

        def grouping() -> tuple[int, int]:
            headers = {"Authorization": f"Bearer {token}"}
            summary = httpx.get(f"http://127.0.0.1:{port}/api/v1/metrics", headers=headers, timeout=30).json()
            batching = summary["gateway"]["dynamic_batching"] or {}
            return batching.get("batches", 0), batching.get("requests", 0)

        return run_steps(name, port, request, lambda: parts, args, grouping=grouping)
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
        cluster.close()


def ray_batching() -> tuple[int, float]:
    """Ray Serve's ``@serve.batch`` gets the gateway's own limits: ``(max_batch_size, batch_wait_timeout_s)``."""
    from altlas_dask.config import load_config

    batching = load_config(environ={}).serving.batching["generate"]
    return batching.max_batch_size, batching.max_wait_ms / 1000


def ray_rows(name: str, mode: str, args: Any) -> list[dict[str, Any]]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_DIR)}
    server = subprocess.Popen(
        [args.ray, str(BENCH_DIR / "serving_ray.py"), mode, str(port), *map(str, ray_batching())],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_until(lambda: server.stdout.readline().strip() == "READY" or server.poll() is not None, "Ray Serve")
        if server.poll() is not None:
            raise SystemExit("Ray Serve did not start")
        request = http_request(port, "/", {"text": PROMPT, "max_length": args.chars, "temperature": 0.7})
        return run_steps(name, port, request, lambda: {"ray": tree_pids(server.pid)}, args, gateway=False)
    finally:
        server.terminate()
        server.wait(timeout=60)


def report(rows: list[dict[str, Any]], args: Any, info: dict[str, str], elapsed: float) -> str:
    from altlas_dask.config import load_config

    batching = load_config(environ={}).serving.batching["generate"]
    targets = list(dict.fromkeys(r["target"] for r in rows))
    rounds = sorted({r["round"] for r in rows})

    def held(target: str, round_: int) -> tuple[float, float]:
        """The highest rate held in one round, and the CPU per request there."""
        mine = [r for r in rows if r["target"] == target and r["round"] == round_ and r["held"]]
        top = max(mine, key=lambda r: r["rate"], default=None)
        return (top["rate"], top["cpu_ms"]) if top else (0.0, float("nan"))

    summary = []
    for t in targets:
        per_round = [held(t, n) for n in rounds]
        summary.append(
            [
                t,
                " / ".join(f"{rate:g}" if rate else "none" for rate, _ in per_round),
                f"{min(rate for rate, _ in per_round):g}",
                " / ".join(f"{cpu:.1f}" for _, cpu in per_round),
            ]
        )
    lines = [
        "## Serving peers: time-to-text of the GRU (`bench/serving.py`)"
        + ("" if args.section == "serving" else f", {args.section.replace('_', ' ')}"),
        "",
        f"Command: `.venv/bin/python bench/serving.py {shlex.join(sys.argv[1:])}`  ",
        f"Machine: {machine_line(info)}; wall time {elapsed:.0f} s; load average (1 min) at the end "
        f"{os.getloadavg()[0]:.1f}.",
        "",
        f"Each request: {args.chars} characters from a {len(PROMPT)}-character prompt, temperature 0.7; open loop "
        f'for {args.duration:g} s per rate. Gateway: `POST /api/v1/predict` with `"wait": 10` on {args.gpus} '
        "simulated GPUs (CPU torch); dynamic batching = `serving.batching.generate` "
        f"(max_batch_size {batching.max_batch_size}, max_wait_ms {batching.max_wait_ms:g}): the gateway groups "
        "the requests of the same moment into one GPU task while every GPU has one of its batches, see "
        "docs/design.md; *mean batch* = requests per batch task over the step. Held = no errors, p99 under "
        "500 ms and at least 95% of the rate answered. *Of which*: CPU ms per request by process.",
        "",
        table(
            [
                "round",
                "load",
                "target",
                "rate/s",
                "answered/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "CPU ms/request",
                "of which",
                "mean batch",
                "held",
            ],
            [
                [
                    r["round"],
                    f"{r['load']:.1f}",
                    r["target"],
                    f"{r['rate']:g}",
                    f"{r['achieved']:.1f}",
                    f"{r['p50']:.0f}",
                    f"{r['p99']:.0f}",
                    r["errors"],
                    f"{r['cpu_ms']:.1f}",
                    split_text(r),
                    f"{r['batch']:.1f}" if r.get("batch") else "-",
                    "yes" if r["held"] else "no",
                ]
                for r in rows
            ],
        ),
        "",
        table(
            ["target", "highest rate held (p99 < 500 ms), per round", "in every round", "CPU ms/request there"],
            summary,
        ),
        "",
        "*Round*: the targets run one after another, the order reversed every round (so each target meets the "
        "machine's other load at both ends of the run); *load* = 1-minute load average at the step's start. "
        "Ray Serve's `@serve.batch` gets the gateway's `max_batch_size` and `max_wait_ms` as "
        "`max_batch_size` / `batch_wait_timeout_s`; one replica, as Ray Serve deploys by default.",
    ]
    if not args.ray:
        lines += ["", "Ray Serve rows: run `make bench-peers` (installs Ray into `.venv-ray` and passes `--ray`)."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rates", default="50,100,200,300,400")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--chars", type=int, default=32)
    p.add_argument("--gpus", type=int, default=4)
    p.add_argument("--timeout", type=float, default=15.0)
    p.add_argument("--ray", default=None, help="a Python with Ray Serve (make bench-peers makes .venv-ray)")
    p.add_argument("--targets", default="batching,no-batching,ray,ray-batch", help="which targets, in this order")
    p.add_argument("--rounds", type=int, default=2, help="rounds over the targets, the order reversed every round")
    p.add_argument("--section", default="serving", help="the bench/RESULTS.md section to write")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("distributed", "altlas_dask", "scheduler_plugins", "tornado", "bokeh"):
        logging.getLogger(name).setLevel(logging.ERROR)
    info, start = machine(), time.monotonic()
    runs = {
        "batching": lambda: gateway_rows("gateway, dynamic batching", True, args),
        "no-batching": lambda: gateway_rows("gateway, no batching", False, args),
        "ray": lambda: ray_rows("Ray Serve, plain", "plain", args) if args.ray else [],
        "ray-batch": lambda: ray_rows("Ray Serve, @serve.batch", "batch", args) if args.ray else [],
    }
    order = [t.strip() for t in args.targets.split(",")]
    rows = []
    for round_index in range(args.rounds):
        for target in order if round_index % 2 == 0 else order[::-1]:
            rows += [{**row, "round": round_index + 1} for row in runs[target]()]
    text = report(rows, args, info, time.monotonic() - start)
    print("\n" + text)
    if not args.no_write:
        write_section(args.section, text)


if __name__ == "__main__":
    main()
