"""``altlas-dask certs``: a small certificate authority for the cluster's mutual TLS.

``certs init DIR`` creates ``DIR/ca.pem`` and ``DIR/ca-key.pem``; ``certs issue DIR --user alice``
(``--service gateway``, ``--node worker-1``) writes ``DIR/<name>.pem`` and ``DIR/<name>-key.pem``,
signed by that CA. The identity mapping the router applies (scheduler_plugins/identity.py):

* subject **common name** (CN) = the name: a user name for ``--user`` (the name quotas, fair share
  and accounting use), a service name for ``--service`` (``gateway``, ``console``), a host name for
  ``--node`` (scheduler and workers);
* subject **organizational unit** (OU) = the kind: ``user``, ``service`` or ``node``. Only user and
  service certificates act as users; services listed in ``security.delegates`` may act for others.

Every certificate is an RSA 2048 key, SHA-256 signed, valid ``days`` (default 365); node certificates
also carry ``localhost``/``127.0.0.1`` and the node name as subject alternative names.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from altlas_dask.config import USER_NAME_PATTERN, ConfigError, load_config
from altlas_dask.config import Security as SecurityConfig

if TYPE_CHECKING:
    from distributed import Security

Kind = Literal["user", "service", "node"]
KINDS: tuple[Kind, ...] = ("user", "service", "node")
CA_CERT, CA_KEY = "ca.pem", "ca-key.pem"
CA_NAME = "altlas-dask CA"


class CertError(ValueError):
    """A certificate cannot be created (the message names what and why)."""


@dataclass(frozen=True)
class Issued:
    """Paths of one issued certificate and its key."""

    name: str
    kind: Kind
    cert: Path
    key: Path


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def init_ca(directory: str | os.PathLike[str], days: int = 3650, force: bool = False) -> Path:
    """Create the CA in ``directory`` (made if missing); refuses to overwrite one unless ``force``."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    if (root / CA_CERT).exists() and not force:
        raise CertError(f"{root / CA_CERT} already exists: a new CA would invalidate every issued certificate")
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(root / CA_KEY, _key_pem(key), private=True)
    _write(root / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return root / CA_CERT


def _load_ca(root: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((root / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((root / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise CertError(
            f"no CA in {str(root)!r} ({exc.filename} missing): run `altlas-dask certs init {root}`"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CertError(f"{root / CA_KEY} is not an RSA key")
    return cert, key


def issue(
    directory: str | os.PathLike[str],
    name: str,
    kind: Kind = "user",
    days: int = 365,
    force: bool = False,
    delegates: Collection[str] = SecurityConfig().delegates,
) -> Issued:
    """Sign a certificate ``CN=name, OU=kind`` with the CA in ``directory``; write ``<name>.pem``/``<name>-key.pem``.

    A delegate's name (``security.delegates``) is only ever a service's: a user or node certificate by that
    name would be refused by the router anyway, and would confuse whoever reads the certificate."""
    if kind not in KINDS:
        raise CertError(f"kind must be one of {', '.join(KINDS)} (got {kind!r})")
    if kind != "service" and name in delegates:
        raise CertError(
            f"{kind} name {name!r} is a delegate's (security.delegates: {', '.join(delegates)}): only a service "
            f"certificate may carry it (--service {name})"
        )
    if not re.match(USER_NAME_PATTERN, name or ""):
        raise CertError(f"{kind} name {name!r} must be 1-128 letters, digits or _ . @ -")
    if name in ("ca", "ca-key") or name.endswith("-key"):
        raise CertError(f"{kind} name {name!r} would clash with the CA's or a key's file name")
    root = Path(directory)
    ca_cert, ca_key = _load_ca(root)
    cert_path, key_path = root / f"{name}.pem", root / f"{name}-key.pem"
    if cert_path.exists() and not force:
        raise CertError(f"{cert_path} already exists (pass --force to replace it)")
    key = _new_key()
    now = _now()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
        ]
    )
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if kind == "node" else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if kind == "node":
        alt: list[x509.GeneralName] = [x509.DNSName(name), x509.DNSName("localhost")]
        alt.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return Issued(name, kind, cert_path, key_path)


def subject_of(path: str | os.PathLike[str]) -> tuple[str, str | None]:
    """``(common name, organizational unit)`` of a PEM certificate file."""
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return (str(cn[0].value) if cn else ""), (str(ou[0].value) if ou else None)


# -- Dask Security objects ---------------------------------------------------------------------------------

#: The nanny preload that refuses every non-node certificate in tls mode (docs/security.md): start_cluster adds
#: it, Kubernetes workers get it as DASK_DISTRIBUTED__NANNY__PRELOAD, ``dask worker`` as ``--preload-nanny``.
NANNY_GATE = "scheduler_plugins.gate"


def _existing(value: str | None, key: str, hint: str) -> str:
    if not value:
        raise ConfigError(f"security.{key} is not set, but security.identity is tls: {hint}")
    if not Path(value).is_file():
        raise ConfigError(f"security.{key}={value!r}: no such file ({hint})")
    return value


def tls_security(ca_file: str, cert: str, key: str | None, role: Literal["client", "node"]) -> Security:
    """A ``distributed.Security`` for mutual TLS: a client's certificate, or a node's for scheduler and workers."""
    from distributed import Security

    fields = {"tls_ca_file": str(ca_file), "tls_client_cert": str(cert), "tls_client_key": key and str(key)}
    if role == "node":
        for server in ("scheduler", "worker"):
            fields[f"tls_{server}_cert"], fields[f"tls_{server}_key"] = str(cert), key and str(key)
    return Security(require_encryption=True, **fields)


def client_security(directory: str | os.PathLike[str], name: str) -> Security:
    """The ``security=`` of a client acting as ``name``: ``DIR/ca.pem``, ``DIR/<name>.pem``, ``DIR/<name>-key.pem``."""
    root = Path(directory)
    for path in (root / CA_CERT, root / f"{name}.pem", root / f"{name}-key.pem"):
        if not path.is_file():
            raise CertError(f"{path} does not exist: run `altlas-dask certs issue {root} --user {name}`")
    return tls_security(str(root / CA_CERT), str(root / f"{name}.pem"), str(root / f"{name}-key.pem"), "client")


def dask_security(config: SecurityConfig, role: Literal["client", "node"]) -> Security | None:
    """The Dask ``Security`` for this process from ``security:`` in cluster.yaml (``None`` in open mode)."""
    if config.identity == "none":
        return None
    ca = _existing(config.ca_file, "ca_file", "altlas-dask certs init DIR writes DIR/ca.pem")
    if role == "node":
        cert = _existing(config.node_cert, "node_cert", "altlas-dask certs issue DIR --node NAME")
        key = config.node_key and _existing(config.node_key, "node_key", "the -key.pem beside the node cert")
    else:
        cert = _existing(config.client_cert, "client_cert", "altlas-dask certs issue DIR --user NAME")
        key = config.client_key and _existing(config.client_key, "client_key", "the -key.pem beside the cert")
    return tls_security(ca, cert, key, role)


def common_name(cert: str | None) -> str | None:
    """The CN of a PEM certificate given as a path or as PEM text (``None`` for no certificate)."""
    if not cert:
        return None
    data = cert.encode() if "\n" in cert else Path(cert).read_bytes()
    names = x509.load_pem_x509_certificate(data).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


# -- open mode -------------------------------------------------------------------------------------------------


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` (or ``tcp://host:port``) listens on loopback only (an empty host is every interface)."""
    host = address.split("://")[-1].rpartition(":")[0].strip("[]") or address.split("://")[-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, an empty host (all interfaces): reachable from elsewhere


def identity_line(config: SecurityConfig, scheduler_address: str, insecure: bool) -> str:
    """The one line ``up`` prints about identity; ConfigError for open mode off loopback without ``insecure``."""
    if config.identity == "tls":
        return f"tls (mutual TLS; users are certificate names; delegates: {', '.join(config.delegates) or 'none'})"
    if not is_loopback(scheduler_address) and not insecure:
        raise ConfigError(
            f"the scheduler would listen on {scheduler_address} (not loopback) with security.identity: none, so anyone "
            'who reaches it can act as any user: set security.identity: tls (docs/security.md), or pass --insecure'
        )
    return "none (open mode: user names are self-declared, anyone who reaches the scheduler can act as any user)"


# -- the CLI -----------------------------------------------------------------------------------------------


@click.group()
def certs() -> None:
    """A certificate authority for mutual TLS (security.identity: tls). See docs/security.md."""


@certs.command("init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--days", type=click.IntRange(1, 36500), default=3650, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing CA (every issued certificate stops working).")
def init_command(directory: str, days: int, force: bool) -> None:
    """Create DIRECTORY/ca.pem and DIRECTORY/ca-key.pem (keep ca-key.pem private)."""
    try:
        path = init_ca(directory, days, force)
    except CertError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"CA: {path} (key {Path(directory) / CA_KEY}, mode 600)")


@certs.command("issue")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option("--user", "users", multiple=True, help="A user certificate, CN = the user name (repeatable).")
@click.option("--service", "services", multiple=True, help="A service certificate (gateway, console; repeatable).")
@click.option("--node", "nodes", multiple=True, help="A node certificate for the scheduler/workers (repeatable).")
@click.option("--days", type=click.IntRange(1, 36500), default=365, show_default=True)
@click.option("--force", is_flag=True, help="Replace existing certificates of the same names.")
def issue_command(
    directory: str, users: tuple[str, ...], services: tuple[str, ...], nodes: tuple[str, ...], days: int, force: bool
) -> None:
    """Issue certificates signed by the CA in DIRECTORY: DIRECTORY/<name>.pem and <name>-key.pem."""
    wanted = [(n, "user") for n in users] + [(n, "service") for n in services] + [(n, "node") for n in nodes]
    if not wanted:
        raise click.UsageError("name at least one of --user NAME, --service NAME, --node NAME")
    try:
        delegates = load_config().security.delegates
    except ConfigError as exc:
        raise click.ClickException(f"cannot read security.delegates: {exc}") from None
    for name, kind in wanted:
        try:
            issued = issue(directory, name, kind, days, force, delegates)  # type: ignore[arg-type]
        except CertError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"{kind} {name}: {issued.cert} (key {issued.key})")
