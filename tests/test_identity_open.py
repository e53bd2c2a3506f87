"""Open mode (security.identity: none) is explicit: loopback only unless --insecure, and `up` says so."""

from __future__ import annotations

import pytest
from conftest import altlas

from altlas_dask.config import ConfigError, Security
from altlas_dask.ops.certs import identity_line, is_loopback


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:8786", True),
        ("tcp://127.0.0.1:0", True),
        ("localhost:8786", True),
        ("[::1]:8786", True),
        ("0.0.0.0:8786", False),
        (":8786", False),
        ("10.1.2.3:8786", False),
        ("gpu-box.example:8786", False),
    ],
)
def test_loopback_addresses(address, loopback):
    assert is_loopback(address) is loopback


def test_open_mode_off_loopback_needs_insecure():
    with pytest.raises(ConfigError, match="0.0.0.0:8786 .not loopback. with security.identity: none.*--insecure"):
        identity_line(Security(), "0.0.0.0:8786", insecure=False)
    assert identity_line(Security(), "0.0.0.0:8786", insecure=True).startswith("none (open mode")
    assert identity_line(Security(identity="tls"), "0.0.0.0:8786", insecure=False).startswith("tls (mutual TLS")


def test_up_refuses_a_public_address_in_open_mode_with_one_line():
    done = altlas("up", "--simulate", "1", "--scheduler-address", "0.0.0.0:0", timeout=120)
    assert done.returncode == 2
    assert "--insecure" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
