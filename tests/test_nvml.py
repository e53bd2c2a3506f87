"""The NVML boundary: a fake ``pynvml``-like module object (the only mock in the suite), the real
library on this GPU-less machine, and the launcher's fallback to the simulated pool."""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass

import pynvml
import pytest
from conftest import local_config, nvml_sees_a_gpu, repo_config_data

from altlas_dask.gpus import GpuUnavailableError, NvmlInventory
from altlas_dask.launcher import detect_gpus

GIB = 1024**3
MIB = 1024**2


@dataclass
class FakeDevice:
    name: str | bytes
    uuid: str | bytes
    cc: tuple[int, int]
    total_bytes: int
    used_bytes: int
    util_gpu: int = 0
    util_memory: int = 0
    temperature: int = 40
    power_mw: int | None = 100_000  # None: NVML_ERROR_NOT_SUPPORTED
    limit_mw: int | None = 250_000


def fake_nvml(devices: list[FakeDevice], *, init_error: int | None = None) -> types.ModuleType:
    """A module object shaped like ``pynvml`` (nvidia-ml-py), answering from ``devices``."""
    nv = types.ModuleType("fake_pynvml")
    nv.NVMLError = pynvml.NVMLError
    nv.NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    nv.NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    nv.calls = []

    def init() -> None:
        nv.calls.append("init")
        if init_error is not None:
            raise pynvml.NVMLError(init_error)

    def handle(index: int) -> FakeDevice:
        if not 0 <= index < len(devices):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return devices[index]

    def optional(value: int | None) -> int:
        if value is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)  # an NVMLError_NotSupported instance
        return value

    def temperature(dev: FakeDevice, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return dev.temperature

    nv.nvmlInit = init
    nv.nvmlDeviceGetCount = lambda: len(devices)
    nv.nvmlDeviceGetHandleByIndex = handle
    nv.nvmlDeviceGetName = lambda dev: dev.name
    nv.nvmlDeviceGetUUID = lambda dev: dev.uuid
    nv.nvmlDeviceGetCudaComputeCapability = lambda dev: dev.cc
    nv.nvmlDeviceGetMemoryInfo = lambda dev: types.SimpleNamespace(
        total=dev.total_bytes, used=dev.used_bytes, free=dev.total_bytes - dev.used_bytes
    )
    nv.nvmlDeviceGetUtilizationRates = lambda dev: types.SimpleNamespace(gpu=dev.util_gpu, memory=dev.util_memory)
    nv.nvmlDeviceGetTemperature = temperature
    nv.nvmlDeviceGetPowerUsage = lambda dev: optional(dev.power_mw)
    nv.nvmlDeviceGetEnforcedPowerManagementLimit = lambda dev: optional(dev.limit_mw)
    return nv


def pascal() -> FakeDevice:
    return FakeDevice(b"Tesla P100-PCIE-16GB", b"GPU-p100", (6, 0), 16 * GIB, 1 * GIB)


def ampere() -> FakeDevice:
    return FakeDevice(
        name=b"NVIDIA A100-SXM4-80GB",
        uuid=b"GPU-11111111-2222-3333-4444-555555555555",
        cc=(8, 0),
        total_bytes=80 * GIB,
        used_bytes=1536 * MIB + 123_456,  # partial MiB rounds down
        util_gpu=37,
        util_memory=12,
        temperature=64,
        power_mw=123_456,
        limit_mw=400_000,
    )


def ada_str() -> FakeDevice:
    # nvidia-ml-py >= 11.5 returns str, older versions bytes: both must work
    return FakeDevice("NVIDIA L4", "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", (8, 9), 24 * GIB, 0, temperature=30)


def test_state_translates_nvml_units():
    inventory = NvmlInventory(nvml=fake_nvml([ampere()]))
    state = inventory.state(0)
    assert state.id == 0
    assert state.name == "NVIDIA A100-SXM4-80GB"
    assert state.uuid == "GPU-11111111-2222-3333-4444-555555555555"
    assert state.compute_capability == "8.0"
    assert state.status == "active"
    assert state.memory_total_mb == 81920  # bytes -> MiB
    assert state.memory_used_mb == 1536
    assert state.memory_free_mb == 81920 - 1536
    assert state.utilization_gpu == 37.0
    assert state.utilization_memory == 12.0
    assert state.temperature_c == 64.0
    assert state.power_usage_w == pytest.approx(123.456)  # mW -> W
    assert state.power_limit_w == pytest.approx(400.0)
    assert state.simulated is False
    assert state.health_status == "healthy"


def test_str_names_and_uuids_are_accepted():
    state = NvmlInventory(nvml=fake_nvml([ada_str()])).state(0)
    assert state.name == "NVIDIA L4"
    assert state.uuid == "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    assert state.compute_capability == "8.9"
    assert state.memory_total_mb == 24576


def test_gpus_lists_every_device_in_index_order():
    inventory = NvmlInventory(nvml=fake_nvml([ampere(), ada_str()]))
    assert [(g.id, g.name) for g in inventory.gpus()] == [(0, "NVIDIA A100-SXM4-80GB"), (1, "NVIDIA L4")]


def test_min_compute_capability_filters_devices():
    nv = fake_nvml([pascal(), ampere(), ada_str()])
    inventory = NvmlInventory(min_compute_capability=7.0, nvml=nv)
    assert inventory.indices() == [1, 2]
    assert [g.id for g in inventory.gpus()] == [1, 2]  # ids stay the NVML indices
    assert [g.id for g in NvmlInventory(min_compute_capability=8.5, nvml=nv).gpus()] == [2]
    assert [g.id for g in NvmlInventory(min_compute_capability=0.0, nvml=nv).gpus()] == [0, 1, 2]


def test_no_device_meeting_the_minimum_is_unavailable():
    inventory = NvmlInventory(min_compute_capability=7.0, nvml=fake_nvml([pascal()]))
    with pytest.raises(GpuUnavailableError, match="min_compute_capability"):
        inventory.gpus()


def test_power_not_supported_reads_as_zero():
    device = ampere()
    device.power_mw = None
    device.limit_mw = None
    state = NvmlInventory(nvml=fake_nvml([device])).state(0)
    assert state.power_usage_w == 0.0
    assert state.power_limit_w == 0.0
    assert state.temperature_c == 64.0  # the rest still reads


def test_other_nvml_errors_are_not_swallowed():
    nv = fake_nvml([ampere()])

    def broken(dev):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    nv.nvmlDeviceGetPowerUsage = broken
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        NvmlInventory(nvml=nv).state(0)


def test_hot_device_is_critical_at_the_configured_maximum():
    device = ampere()
    device.temperature = 88
    assert NvmlInventory(nvml=fake_nvml([device])).state(0).health_status == "critical"
    assert NvmlInventory(max_temperature=95, nvml=fake_nvml([device])).state(0).health_status == "warning"


@pytest.mark.parametrize(
    "code", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED, pynvml.NVML_ERROR_NO_PERMISSION]
)
def test_nvml_init_failure_is_gpu_unavailable(code):
    nv = fake_nvml([ampere()], init_error=code)
    with pytest.raises(GpuUnavailableError, match="NVML is not usable here") as info:
        NvmlInventory(nvml=nv)
    assert isinstance(info.value.__cause__, pynvml.NVMLError)
    assert nv.calls == ["init"]


def test_no_device_is_gpu_unavailable():
    with pytest.raises(GpuUnavailableError, match="no GPU"):
        NvmlInventory(nvml=fake_nvml([]))


# -- the real library on this machine ----------------------------------------------------------------

needs_no_gpu = pytest.mark.skipif(nvml_sees_a_gpu(), reason="NVML sees a real GPU on this machine")


@needs_no_gpu
def test_real_pynvml_without_a_gpu_is_gpu_unavailable():
    with pytest.raises(GpuUnavailableError):
        NvmlInventory()


@needs_no_gpu
def test_detect_gpus_falls_back_to_the_simulated_pool_with_a_warning(caplog):
    config = local_config()
    assert config.cluster.simulate is None and config.gpu.detection.enabled
    with caplog.at_level(logging.WARNING, logger="altlas_dask.launcher"):
        gpus, simulated = detect_gpus(config)
    assert simulated is True
    assert [g.name for g in gpus] == ["Simulated A100 80GB"] * 2 + ["Simulated T4 16GB"] * 2
    warnings = [r for r in caplog.records if r.name == "altlas_dask.launcher" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "falling back to the simulated GPU pool" in warnings[0].getMessage()


def test_detect_gpus_skips_nvml_when_simulating_or_detection_is_off(caplog):
    with caplog.at_level(logging.WARNING, logger="altlas_dask.launcher"):
        gpus, simulated = detect_gpus(local_config(), simulate=3)
        assert simulated is True and len(gpus) == 3
        gpus, simulated = detect_gpus(local_config(simulate=2))
        assert simulated is True and len(gpus) == 2
        data = repo_config_data()
        data["gpu"]["detection"]["enabled"] = False
        gpus, simulated = detect_gpus(local_config(data))
        assert simulated is True and len(gpus) == 4
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # NVML was never asked


def test_detect_gpus_applies_the_compute_capability_filter_to_the_simulated_pool():
    data = repo_config_data()
    data["gpu"]["detection"]["min_compute_capability"] = 8.0
    gpus, _ = detect_gpus(local_config(data), simulate=4)
    assert [g.id for g in gpus] == [0, 1]
    data["gpu"]["detection"]["min_compute_capability"] = 9.0
    with pytest.raises(GpuUnavailableError, match="min_compute_capability"):
        detect_gpus(local_config(data), simulate=4)
