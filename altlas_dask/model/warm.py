"""The affinity keys whose state a GPU worker holds: the model's weights for a key, loaded on first use.

A task names the state it reuses with ``gpu_options.affinity`` (a model name, a prompt-prefix id). Each GPU
keeps the latest ``simulation.affinity_cache_keys`` keys (LRU, the capacity the replay gives its modelled
GPUs). A task whose key its GPU holds is warm and pays nothing; a miss loads the key's state first, holding
the device: on a simulated GPU that costs ``simulation.affinity_load_s`` of modelled device time, on a real
one what loading the weights really costs (the shipped model is one set of weights, loaded once per device).
Every generation result says ``warm`` (true/false) when its task named a key; :func:`warm_stats` counts them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from altlas_dask.gpus.chunks import KernelCancelledError


class WarmKeys:
    """One GPU's warm keys, least recent first, at most ``capacity``; hits and misses counted."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.hits = self.misses = 0
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def touch(self, key: str) -> bool:
        """Whether ``key`` is held (a hit, now the most recent); a miss is counted until :meth:`loaded`."""
        with self._lock:
            hit = key in self._keys
            if hit:
                self._keys.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return hit

    def holds(self, key: str) -> bool:
        with self._lock:
            return key in self._keys

    def loaded(self, key: str) -> None:
        """``key``'s state is held from now on; the least recent key beyond the capacity is dropped."""
        with self._lock:
            self._keys[key] = None
            self._keys.move_to_end(key)
            while len(self._keys) > self.capacity:
                self._keys.popitem(last=False)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "keys": len(self._keys), "capacity": self.capacity}


_BOOKS: dict[str, WarmKeys] = {}  # by GPU UUID: one per GPU, even where workers share a process
_BOOKS_LOCK = threading.Lock()


def warm_keys(uuid: str, capacity: int) -> WarmKeys:
    """The warm keys of the GPU ``uuid`` (created on first use)."""
    with _BOOKS_LOCK:
        book = _BOOKS.get(uuid)
        if book is None:
            book = _BOOKS[uuid] = WarmKeys(capacity)
        return book


def hold(device: Any, key: str | None, stop: threading.Event, capacity: int, load_s: float) -> bool | None:
    """Make sure ``device`` holds ``key``'s state before the task uses it; whether it did already (None: no key).

    A miss holds the device while it loads (``device.busy()``: other work on the GPU waits as for a kernel):
    ``load_s`` seconds of modelled time on a simulated GPU (``torch_device`` cpu), stopped early if the task
    is cancelled (then the key stays cold)."""
    if key is None:
        return None
    book = warm_keys(device.uuid, capacity)
    if book.touch(key):
        return True
    with device.busy():
        if not book.holds(key):  # else a task beside it loaded it while this one waited for the device
            if device.torch_device == "cpu" and load_s > 0 and stop.wait(load_s):
                raise KernelCancelledError(f"loading the state of affinity {key!r} stopped: its task was cancelled")
            book.loaded(key)
    return False


def warm_stats(dask_worker: Any = None) -> dict[str, int]:
    """This worker's GPU's warm-key counters (``client.run(warm_stats)`` passes ``dask_worker``)."""
    from altlas_dask.worker.binding import PLUGIN_NAME

    plugin = dask_worker.plugins.get(PLUGIN_NAME) if dask_worker is not None else None
    if plugin is None or plugin.device is None:
        return {"hits": 0, "misses": 0, "keys": 0, "capacity": 0}
    return warm_keys(plugin.device.uuid, plugin.config.simulation.affinity_cache_keys).stats()
