"""``POST /route`` with ``callback_url`` (seed 001 section 6.3.1): the final record, POSTed when the job ends.

Only to hosts listed in ``serving.callbacks.allowed_hosts`` (http or https; nothing else is ever contacted),
signed, retried with exponential backoff up to ``max_attempts``; the outcome shows in ``GET /route/{id}``
as ``callback``.

Signature: ``X-Altlas-Signature: sha256=<hex>``, an HMAC-SHA256 of ``<X-Altlas-Timestamp>.<body>`` with
the per-key secret ``sha256("altlas-callback-v1:" + api_key)``: the receiver, who holds the API key,
computes the same secret; the gateway keeps only the secret of a pending job in memory, never the key.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from altlas_dask.api.errors import ApiError
from altlas_dask.config import Callbacks

logger = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Altlas-Signature"
TIMESTAMP_HEADER = "X-Altlas-Timestamp"


def key_secret(api_key: str) -> bytes:
    """The signing secret of callbacks for requests made with ``api_key``."""
    return hashlib.sha256(b"altlas-callback-v1:" + api_key.encode()).digest()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(api_key: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does: recompute the signature from its API key."""
    return hmac.compare_digest(sign(key_secret(api_key), timestamp, body), signature)


def check_url(url: str, settings: Callbacks) -> str:
    """``url`` if it is http(s) to an allowed host; else a 400 naming ``callback_url``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(400, f"callback_url: must be an http:// or https:// URL (got {url[:80]!r})")
    host = parts.hostname.lower()
    try:
        port = parts.port
    except ValueError:
        raise ApiError(400, f"callback_url: invalid port in {url[:80]!r}") from None
    allowed = {h.lower() for h in settings.allowed_hosts}
    if host not in allowed and (port is None or f"{host}:{port}" not in allowed):
        shown = ", ".join(sorted(allowed)) or "none (serving.callbacks.allowed_hosts is empty)"
        raise ApiError(400, f"callback_url: host {host!r} is not allowed; allowed hosts: {shown}")
    return url


async def deliver(
    url: str,
    record: Callable[[], Awaitable[dict[str, Any]]],
    secret: bytes,
    settings: Callbacks,
    state: dict[str, Any],
) -> None:
    """POST ``await record()`` to ``url`` until a 2xx answer or ``max_attempts``; ``state`` tracks it."""
    import httpx

    body = json.dumps(await record(), separators=(",", ":")).encode()
    delay = settings.backoff_s
    async with httpx.AsyncClient(timeout=settings.timeout_s, follow_redirects=False) as client:
        for attempt in range(1, settings.max_attempts + 1):
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(secret, timestamp, body),
            }
            state.update(attempts=attempt, status="delivering")
            try:
                answer = await client.post(url, content=body, headers=headers)
                if 200 <= answer.status_code < 300:
                    state.update(status="delivered", http_status=answer.status_code)
                    return
                state.update(last_error=f"HTTP {answer.status_code}")
            except httpx.HTTPError as exc:
                state.update(last_error=f"{type(exc).__name__}: {exc}"[:300])
            if attempt < settings.max_attempts:
                await asyncio.sleep(delay)
                delay *= 2
    state["status"] = "failed"
    logger.warning("callback to %s failed after %d attempts: %s", url, settings.max_attempts, state.get("last_error"))
