"""FastAPI dependencies: the gateway, and the caller's identity from ``Authorization: Bearer <api_key>``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from altlas_dask.accounting.api_keys import KeyVerifier, Principal
from altlas_dask.api.errors import ApiError
from altlas_dask.api.gateway import Gateway

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="altlas-dask"'}


async def any_gateway(request: Request) -> Gateway:
    """The gateway, connected or not (503 only before it first connected)."""
    gateway = getattr(request.app.state, "gateway", None)
    if gateway is None:
        raise ApiError(503, "the gateway is not connected to the cluster yet", {"Retry-After": "5"})
    return gateway


async def get_gateway(request: Request) -> Gateway:
    """The gateway; 503 with ``Retry-After`` at once (no network wait) while the scheduler is away."""
    gateway = await any_gateway(request)
    gateway.link.check_available()
    return gateway


async def get_principal(request: Request) -> Principal:
    """401 without a key, with a malformed, unknown or revoked key."""
    header = request.headers.get("authorization")
    if not header:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <api_key>'", CHALLENGE)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "the Authorization header must read 'Bearer <api_key>'", CHALLENGE)
    keys: KeyVerifier = request.app.state.keys
    principal = keys.verify(token.strip())
    if principal is None:
        raise ApiError(401, "invalid or revoked API key", CHALLENGE)
    request.state.user = principal.user
    return principal


async def get_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """403 for a valid key whose role is not ``admin``."""
    if not principal.is_admin:
        raise ApiError(403, f"user {principal.user!r} is not an admin: this endpoint needs an admin API key")
    return principal


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
AnyGatewayDep = Annotated[Gateway, Depends(any_gateway)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(get_admin)]
