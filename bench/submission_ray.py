"""Ray's side of bench/submission.py (run with the Ray environment's Python, made by ``make bench-peers``).

``python bench/submission_ray.py GPUS SLOTS``: starts Ray with GPUS logical GPUs, a no-op GPU task
(``num_gpus=1/SLOTS``, so SLOTS run at once per GPU as the router's slots; ``max_calls=0``: workers are reused)
and its workers, then answers commands on stdin, one per line: ``run N`` (N single ``.remote`` calls, then
``ray.get``: prints ``RESULT`` tasks/s) and ``rt`` (one call + ``ray.get``: ``RESULT`` milliseconds). Prints
``READY`` first. Ray's own log lines share stdout; the parent skips them.
"""

from __future__ import annotations

import sys
import time

import ray


def main() -> None:
    gpus, slots = int(sys.argv[1]), int(sys.argv[2])
    ray.init(num_cpus=gpus * slots, num_gpus=gpus, include_dashboard=False, log_to_driver=False)

    @ray.remote(num_gpus=1 / slots, max_calls=0)
    def noop(x):
        return x

    ray.get([noop.remote(i) for i in range(gpus * slots * 20)])  # every worker started before timing
    print("READY", flush=True)
    for line in sys.stdin:
        command = line.split()
        if command[0] == "run":
            n = int(command[1])
            start = time.perf_counter()
            ray.get([noop.remote(i) for i in range(n)])
            print(f"RESULT {n / (time.perf_counter() - start):.3f}", flush=True)
        elif command[0] == "rt":
            start = time.perf_counter()
            ray.get(noop.remote(0))
            print(f"RESULT {(time.perf_counter() - start) * 1e3:.4f}", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
