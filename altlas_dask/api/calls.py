"""What the gateway's tasks run on the workers; kept free of FastAPI imports (workers unpickle it by reference)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def call(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """``fn(**kwargs)``: lets one ``Client.map`` carry requests whose arguments differ."""
    return fn(**kwargs)
