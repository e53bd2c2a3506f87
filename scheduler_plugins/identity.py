"""Who is calling: verified identities from TLS peer certificates, and who each client may act as.

With ``security.identity: tls`` every Dask comm is mutual TLS, so the scheduler side of a client's comm
holds the peer certificate Python's ``ssl`` verified (``comm.extra_info["peercert"]``). The mapping
(altlas_dask/ops/certs.py issues matching certificates):

* common name (CN) -> the name; organizational unit (OU) -> the kind (``user``, ``service``, ``node``);
* a ``user`` or ``service`` certificate acts as its CN; a ``node`` (scheduler, worker) acts as nobody;
* a *service* certificate whose name is in ``security.delegates`` may name another user
  (``gpu_options.user``, ``as_user``) and vouch that the user is an admin (the REST gateway and the console
  authenticate their users themselves); a user or node certificate with a delegate's name is no delegate;
* admin rights come from ``quotas.admins`` for user certificates (never for a service's own name), or from
  a delegate's vouching.

With ``security.identity: none`` (open mode) names are self-declared: ``as_user``/``gpu_options.user``
are taken as given, and every call must name one. No Dask imports beyond duck-typed comm access.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from altlas_dask.config import Security
from altlas_dask.errors import IdentityError
from scheduler_plugins.dask_internals import wrap_stream_handler

ACTING_KINDS = frozenset({"user", "service"})


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified certificate subject."""

    name: str
    kind: str  # user | service | node (or "" when the certificate has no OU)


@dataclass(frozen=True, slots=True)
class Caller:
    """Whom one router call acts as, and whether the caller vouched for admin rights (delegates only)."""

    user: str
    vouched_admin: bool = False
    kind: str = "user"  # the certificate's kind; "delegated" when a delegate names the user

    @property
    def named_admin_counts(self) -> bool:
        """Whether ``quotas.admins`` listing :attr:`user` makes this caller an admin (user certificates only)."""
        return self.kind == "user"


def from_peercert(peercert: Mapping[str, Any] | None) -> Identity | None:
    """``ssl.SSLSocket.getpeercert()`` -> Identity (``None`` without a certificate or a CN)."""
    if not peercert:
        return None
    fields: dict[str, str] = {}
    for rdn in peercert.get("subject", ()):
        for attribute, value in rdn:
            fields.setdefault(attribute, value)
    name = fields.get("commonName")
    return Identity(name, fields.get("organizationalUnitName", "")) if name else None


def of_comm(comm: Any) -> Identity | None:
    """The verified identity on the far end of a Dask comm (``None`` on a plain TCP or in-process comm)."""
    extra = getattr(comm, "extra_info", None) or {}
    return from_peercert(extra.get("peercert"))


class Identities:
    """The identity policy of one router: the registry client id -> verified identity, and the checks."""

    def __init__(self, security: Security) -> None:
        self.required = security.identity == "tls"
        self.delegates = frozenset(security.delegates)
        self.clients: dict[str, Identity | None] = {}

    def is_delegate(self, identity: Identity | None) -> bool:
        """A service certificate named in ``security.delegates`` (the kind matters: names are not unique)."""
        return identity is not None and identity.kind == "service" and identity.name in self.delegates

    def level(self, identity: Identity | None, is_admin: Callable[[str], bool]) -> str | None:
        """The identity's protocol level (scheduler_plugins/handler_policy.py): ``node`` for ``OU=node``;
        ``admin`` for a delegate or a user certificate in quotas.admins; ``user``; None for no/unknown kind."""
        if identity is None:
            return None
        if identity.kind == "node":
            return "node"
        if self.is_delegate(identity) or (identity.kind == "user" and is_admin(identity.name)):
            return "admin"
        return "user" if identity.kind in ACTING_KINDS else None

    # -- clients -----------------------------------------------------------------------------------------
    def client(self, scheduler: Any, client_id: str | None) -> Identity | None:
        """The identity of client ``client_id``, read once from its comm to the scheduler, then remembered."""
        if client_id is None:
            return None
        if client_id not in self.clients:
            batched = scheduler.client_comms.get(client_id) if scheduler is not None else None
            comm = getattr(batched, "comm", None)
            if comm is None:
                return None  # not connected (yet): do not cache a miss
            self.clients[client_id] = of_comm(comm)
        return self.clients[client_id]

    def forget(self, client_id: str) -> None:
        self.clients.pop(client_id, None)

    # -- tasks -------------------------------------------------------------------------------------------
    def task_options(self, options: Any, verified: Identity | None, client_id: str | None) -> Any:
        """``gpu_options`` bound to the verified user: the user filled in, restated, or (delegates) another.

        Open mode: ``options`` unchanged. Raises :class:`IdentityError` when the task may not run.
        """
        if not self.required:
            return options
        name = self._acting_name(verified, f"client {client_id}")
        options = dict(options) if isinstance(options, Mapping) else {}
        claimed = options.get("user")
        if claimed is None:
            options["user"] = name
        elif claimed != name and not self.is_delegate(verified):
            raise IdentityError(
                f"gpu_options.user={claimed!r}: your certificate identifies you as {name!r}; only the delegates "
                f"(service certificates in security.delegates: {', '.join(sorted(self.delegates)) or 'none'}) submit "
                "for other users"
            )
        return options

    # -- router calls ------------------------------------------------------------------------------------
    def caller(self, comm: Any, as_user: str | None, admin: bool = False) -> Caller:
        """Whom an RPC acts as. TLS: the comm's verified name (``as_user`` may restate it; delegates may name
        anyone and vouch ``admin``). Open mode: ``as_user`` as declared, and it must be given."""
        if not self.required:
            if not as_user:
                raise IdentityError("name the user this call acts as (as_user=...): security.identity is none", 401)
            return Caller(as_user, admin)
        verified = of_comm(comm)
        name = self._acting_name(verified, "this connection")
        assert verified is not None
        if self.is_delegate(verified):
            if as_user in (None, name):
                return Caller(name, admin and as_user is not None, kind=verified.kind)
            return Caller(as_user, admin, kind="delegated")
        if as_user not in (None, name):
            raise IdentityError(
                f"as_user={as_user!r}: your certificate identifies you as {name!r}; only delegates act for others"
            )
        return Caller(name, kind=verified.kind)

    def _acting_name(self, verified: Identity | None, who: str) -> str:
        if verified is None:
            raise IdentityError(
                f"{who} has no verified identity: security.identity is tls and GPU work needs a client certificate "
                "(altlas-dask certs issue DIR --user NAME)",
                401,
            )
        if verified.kind not in ACTING_KINDS:
            raise IdentityError(
                f"the certificate of {verified.name!r} is a {verified.kind or 'unknown-kind'} certificate: only user "
                "and service certificates (OU=user/service) act as users"
            )
        return verified.name


def guard_force_cancel(scheduler: Any, identities: Identities, is_admin: Callable[[str], bool]) -> None:
    """Dask's ``cancel(..., force=True)`` cancels a key whoever wants it: under TLS only admins (and nodes) may
    force; anyone else's forced cancel only drops their own interest in the keys."""
    if not identities.required:
        return

    def guard(original: Callable[..., Any]) -> Callable[..., Any] | None:
        if getattr(original, "altlas_guarded", False):
            return None

        def cancel_keys(*, client: str, force: bool = False, **kwargs: Any) -> Any:
            if force:
                who = identities.client(scheduler, client)
                if identities.level(who, is_admin) not in ("admin", "node"):
                    force = False
            return original(client=client, force=force, **kwargs)

        cancel_keys.altlas_guarded = True  # type: ignore[attr-defined]
        return cancel_keys

    wrap_stream_handler(scheduler, "cancel-keys", guard)
