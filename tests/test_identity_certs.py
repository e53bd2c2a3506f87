"""``altlas-dask certs``: a CA, and user/service/node certificates it signs (CN = name, OU = kind)."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509

from altlas_dask.ops.certs import CertError, init_ca, issue, subject_of
from tests.conftest import altlas


def test_cli_walkthrough_issues_certificates_signed_by_the_ca(tmp_path: Path) -> None:
    ca_dir = tmp_path / "certs"
    done = altlas("certs", "init", str(ca_dir))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((ca_dir / "ca-key.pem").stat().st_mode) == 0o600
    done = altlas("certs", "issue", str(ca_dir), "--user", "alice", "--service", "gateway", "--node", "worker-1")
    assert done.returncode == 0, done.stderr
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    for name, kind in (("alice", "user"), ("gateway", "service"), ("worker-1", "node")):
        assert subject_of(ca_dir / f"{name}.pem") == (name, kind)
        cert = x509.load_pem_x509_certificate((ca_dir / f"{name}.pem").read_bytes())
        cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
        assert stat.S_IMODE((ca_dir / f"{name}-key.pem").stat().st_mode) == 0o600


def test_cli_errors_are_one_clear_line(tmp_path: Path) -> None:
    done = altlas("certs", "issue", str(tmp_path), "--user", "alice")
    assert done.returncode != 0 and "no CA in" in done.stderr and "certs init" in done.stderr
    assert "Traceback" not in done.stderr
    assert altlas("certs", "init", str(tmp_path)).returncode == 0
    again = altlas("certs", "init", str(tmp_path))
    assert again.returncode != 0 and "already exists" in again.stderr
    bad = altlas("certs", "issue", str(tmp_path), "--user", "bob smith")
    assert bad.returncode != 0 and "'bob smith'" in bad.stderr and "Traceback" not in bad.stderr
    nothing = altlas("certs", "issue", str(tmp_path))
    assert nothing.returncode != 0 and "--user NAME" in nothing.stderr


def test_issue_refuses_to_overwrite_and_clashing_names(tmp_path: Path) -> None:
    init_ca(tmp_path)
    issue(tmp_path, "alice")
    with pytest.raises(CertError, match="already exists"):
        issue(tmp_path, "alice")
    issue(tmp_path, "alice", force=True)
    with pytest.raises(CertError, match="clash"):
        issue(tmp_path, "ca")
    with pytest.raises(CertError, match="kind must be one of"):
        issue(tmp_path, "x", kind="robot")  # type: ignore[arg-type]


def test_a_delegates_name_is_only_ever_a_services(tmp_path: Path) -> None:
    """A user or node certificate named like a delegate (security.delegates) is refused at issue time."""
    init_ca(tmp_path)
    for kind in ("user", "node"):
        with pytest.raises(CertError, match=f"{kind} name 'console' is a delegate's .*--service console"):
            issue(tmp_path, "console", kind)  # type: ignore[arg-type]
    issue(tmp_path, "console", "service")
    issue(tmp_path, "gateway", "user", delegates=("console",))  # not a delegate in this cluster
    refused = altlas("certs", "issue", str(tmp_path), "--user", "gateway")  # the repo's cluster.yaml delegates
    assert refused.returncode != 0 and "user name 'gateway' is a delegate's" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_mutual_tls_handshake_with_issued_certificates(tmp_path: Path) -> None:
    """A real TLS handshake on loopback: the server sees the client's CN; a foreign CA's cert is refused."""
    init_ca(tmp_path / "ca")
    node = issue(tmp_path / "ca", "node-1", "node")
    alice = issue(tmp_path / "ca", "alice")
    init_ca(tmp_path / "other")
    mallory = issue(tmp_path / "other", "alice")

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca" / "ca.pem"))
    server_ctx.load_cert_chain(node.cert, node.key)
    server_ctx.verify_mode = ssl.CERT_REQUIRED

    def client_ctx(issued) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tmp_path / "ca" / "ca.pem"))
        ctx.load_cert_chain(issued.cert, issued.key)
        return ctx

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        seen: list[object] = []

        def serve(n: int) -> None:
            for _ in range(n):
                conn, _ = listener.accept()
                try:
                    with server_ctx.wrap_socket(conn, server_side=True) as tls:
                        seen.append(dict(x[0] for x in tls.getpeercert()["subject"]))
                except ssl.SSLError as exc:
                    seen.append(exc)

        thread = threading.Thread(target=serve, args=(2,))
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client_ctx(alice).wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.do_handshake()
        with socket.create_connection(("127.0.0.1", port)) as raw:
            try:
                with client_ctx(mallory).wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.recv(1)
            except (ssl.SSLError, ConnectionError):
                pass
        thread.join(timeout=30)
    assert seen[0] == {"commonName": "alice", "organizationalUnitName": "user"}
    assert isinstance(seen[1], ssl.SSLError)
