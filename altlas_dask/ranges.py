"""Range checks for numbers that cross msgpack (router RPCs) or reach SQLite: errors name the field and value.

Pure (no Dask): the Python client checks before sending, the router's RPC handlers check again for
callers that bypass the client, and the config models use the same bounds.
"""

from __future__ import annotations

import math
import operator
from typing import Any

MAX_QUOTA_VALUE = 10**9  # any quota limit (requests, minutes of GPU time)
MAX_GPU_ID = 65_535  # GPU ids are small: the index, or the next free number
MAX_ROWS = 10**7  # rows one listing asks for (the gateway asks for offset + limit)
MAX_OFFSET = 10**9
MAX_TIMESTAMP = 10**11  # Unix seconds (year 5138)
MAX_WINDOW_S = 366 * 24 * 3600.0  # the longest window of finished work the router summarises (GET /metrics)


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int if it is a whole number (an int, or a NumPy integer) in ``low..high``; else ValueError
    naming ``name`` and the value."""
    try:
        number = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        number = None
    if number is None:
        raise ValueError(f"{name} must be a whole number in {low:,}..{high:,} (got {value!r})")
    if not low <= number <= high:
        raise ValueError(f"{name} must be in {low:,}..{high:,} (got {value!r})")
    return number


def check_number(name: str, value: Any, low: float, high: float) -> float:
    """``value`` if it is a finite number in ``low..high``; else ValueError naming ``name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number in {low:,}..{high:,} (got {value!r})")
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be in {low:,}..{high:,} (got {value!r})")
    return value
