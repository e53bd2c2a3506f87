"""Which GPUs served each affinity key lately (``gpu_options.affinity``: a model, a prompt prefix, a data shard).

A bounded LRU: the latest ``KEYS`` keys, each with the last ``PER_KEY`` GPUs that took a task with it. A
strategy prefers those GPUs while their load stays within a bound (strategies.affine).
"""

from __future__ import annotations

from collections import OrderedDict

KEYS = 100_000
PER_KEY = 2


class AffinityBook:
    def __init__(self, keys: int = KEYS, per_key: int = PER_KEY) -> None:
        self.keys, self.per_key = keys, per_key
        self._gpus: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    def served(self, key: str | None, gpu: int) -> None:
        """A task with ``key`` was placed on ``gpu``: it is the key's most recent GPU."""
        if key is None:
            return
        recent = (gpu, *(g for g in self._gpus.pop(key, ()) if g != gpu))[: self.per_key]
        self._gpus[key] = recent
        if len(self._gpus) > self.keys:
            self._gpus.popitem(last=False)

    def gpus(self, key: str | None) -> frozenset[int]:
        """The GPUs that served ``key`` lately (none for no key)."""
        return frozenset(self._gpus.get(key, ())) if key is not None else frozenset()

    def __len__(self) -> int:
        return len(self._gpus)
