"""Ray's side of ``bench/scaling.py --prefetch ... --ray PYTHON`` (run with the Ray environment's Python).

``python bench/scaling_ray.py GPUS SLOTS TASKS SECONDS``: starts Ray with GPUS logical GPUs and a task with
``num_gpus=1/SLOTS`` (SLOTS run at once per GPU, as the router's slots), whose kernel holds its GPU alone for
SECONDS, as a virtual GPU's kernels take the device in turn (a lock file per GPU: Ray's workers are processes).
Workers are started before timing (every slot held at once); then TASKS calls go in at once and the clock
runs to the last result.
Prints ``RESULT {json}``: makespan, the batch's wall clock, and each kernel's GPU, start, end, device seconds.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import ray


def main() -> None:
    gpus, slots, tasks, seconds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    locks = Path(tempfile.mkdtemp(prefix="scaling-ray-"))
    ray.init(num_cpus=gpus * slots, num_gpus=gpus, include_dashboard=False, log_to_driver=False)

    @ray.remote(num_gpus=1 / slots, max_calls=0)
    def kernel(hold: float) -> dict:
        gpu = int(ray.get_gpu_ids()[0])
        start = time.time()
        with open(locks / f"gpu-{gpu}.lock", "w") as device:
            fcntl.flock(device, fcntl.LOCK_EX)  # one kernel at a time on this GPU
            time.sleep(hold)
            end = time.time()
            fcntl.flock(device, fcntl.LOCK_UN)
        return {"gpu": gpu, "start": start, "device_seconds": hold, "end": end}  # nominal, as a virtual GPU's

    @ray.remote(num_gpus=1 / slots, max_calls=0)
    def occupy(seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    for _ in range(60):  # Ray starts workers a few at a time: hold every slot until each has its own worker
        if len(set(ray.get([occupy.remote(2.0) for _ in range(gpus * slots)]))) == gpus * slots:
            break
    start, wall0 = time.perf_counter(), time.time()
    results = ray.get([kernel.remote(seconds) for _ in range(tasks)])
    makespan, wall1 = time.perf_counter() - start, time.time()
    print("RESULT " + json.dumps({"makespan": makespan, "wall0": wall0, "wall1": wall1, "results": results}))
    ray.shutdown()


if __name__ == "__main__":
    main()
