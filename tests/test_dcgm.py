"""altlas_dask.gpus.dcgm (health from dcgm-exporter's text) and scheduler_plugins.gpu_info (the UUID join).

Reads tests/data/dcgm-exporter.txt (dcgm-exporter's format, deploy/dcgm/counters.csv's fields) directly
and through a real HTTP server on loopback.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
from conftest import REPO
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from altlas_dask.gpus.dcgm import FIELDS, DcgmError, DcgmUnavailableError, fetch, parse, read_gpu
from altlas_dask.gpus.state import GpuState
from scheduler_plugins.gpu_info import gpu_info_family, worker_host

FIXTURE = REPO / "tests" / "data" / "dcgm-exporter.txt"
UUIDS = [
    "GPU-5d3ad0c6-7a4e-2f1b-9c41-0b7c2e1f8a01",
    "GPU-8f2b1e7d-33c9-4a6e-b0d2-6c5e9a4f1b02",
    "GPU-c1e0a9b4-5d7f-4e28-8a13-2f9d6b7c3e03",
    "GPU-a4f6d2c8-9b1e-47d3-a5c0-8e2b1d9f6a04",
]


def test_parse_the_recorded_text():
    gpus = parse(FIXTURE.read_text())
    assert list(gpus) == UUIDS
    hot = gpus[UUIDS[3]]
    assert (hot.index, hot.model, hot.hostname) == (3, "NVIDIA A100-SXM4-80GB", "gpu-node-1")
    assert (hot.utilization_gpu, hot.memory_used_mb, hot.memory_free_mb) == (99, 74112, 6888)
    assert (hot.temperature_c, hot.power_usage_w, hot.xid, hot.thermal_violation_us) == (89, 398.75, 0, 48211507)
    assert gpus[UUIDS[2]].xid == 79
    assert hot.health_fields() == {
        "utilization_gpu": 99,
        "memory_used_mb": 74112,
        "memory_total_mb": 81000,
        "temperature_c": 89,
        "power_usage_w": 398.75,
    }
    # the fields map onto GpuState's names
    assert set(hot.health_fields()) <= set(GpuState.__dataclass_fields__)


def test_hostname_filter_and_unknown_series_are_ignored():
    text = FIXTURE.read_text() + 'some_other_metric{UUID="x"} 1\n'
    assert parse(text, hostname="gpu-node-1").keys() == set(UUIDS)
    assert parse(text, hostname="gpu-node-2") == {}


def test_every_field_read_is_in_the_exporters_counters():
    counters = REPO / "deploy" / "dcgm" / "counters.csv"
    exported = {line.split(",")[0].strip() for line in counters.read_text().splitlines() if line[:1] not in ("#", "")}
    assert set(FIELDS) <= exported


def test_missing_fields_and_bad_text_are_named():
    without_temp = "\n".join(line for line in FIXTURE.read_text().splitlines() if "GPU_TEMP" not in line)
    with pytest.raises(DcgmError, match=f"GPU {UUIDS[0]} has no DCGM_FI_DEV_GPU_TEMP"):
        parse(without_temp)
    with pytest.raises(DcgmError, match="no UUID/gpu label"):
        parse("DCGM_FI_DEV_GPU_UTIL 3\n")
    with pytest.raises(DcgmError, match="not Prometheus text format"):
        parse("DCGM_FI_DEV_GPU_UTIL{gpu=0} x y z\n")


class _Exporter(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = FIXTURE.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def exporter() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Exporter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def test_read_one_gpu_over_http(exporter: str):
    assert parse(fetch(exporter)).keys() == set(UUIDS)
    assert read_gpu(exporter, UUIDS[1]).utilization_gpu == 12
    with pytest.raises(DcgmError, match="does not report GPU GPU-nope"):
        read_gpu(exporter, "GPU-nope")


def test_an_unreachable_exporter_is_a_clear_error():
    with pytest.raises(DcgmUnavailableError, match="dcgm-exporter at http://127.0.0.1:1/metrics is unavailable"):
        fetch("http://127.0.0.1:1/metrics", timeout=2)


def test_gpu_info_family_maps_router_ids_to_uuids():
    gpus = [
        GpuState(
            id=i,
            uuid=uuid,
            name="NVIDIA A100-SXM4-80GB",
            compute_capability="8.0",
            status="active",
            memory_total_mb=81920,
            memory_used_mb=0,
            utilization_gpu=0.0,
            utilization_memory=0.0,
            temperature_c=30.0,
            power_usage_w=50.0,
            power_limit_w=400.0,
            worker=f"tcp://10.0.3.{7 + i // 2}:4012{i}" if i < 3 else None,
        )
        for i, uuid in enumerate(UUIDS)
    ]
    registry = CollectorRegistry()
    registry.register(type("Info", (), {"collect": lambda self: [gpu_info_family(gpus)]})())
    [family] = text_string_to_metric_families(generate_latest(registry).decode())
    assert family.name == "altlas_gpu_info" and family.type == "gauge"
    rows = [(s.labels["gpu"], s.labels["uuid"], s.labels["host"], s.value) for s in family.samples]
    assert rows == [
        ("0", UUIDS[0], "10.0.3.7", 1.0),
        ("1", UUIDS[1], "10.0.3.7", 1.0),
        ("2", UUIDS[2], "10.0.3.8", 1.0),
        ("3", UUIDS[3], "", 1.0),
    ]
    assert worker_host("tls://[::1]:8786") == "::1"
