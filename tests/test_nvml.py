"""The NVML boundary: the real ``pynvml`` with only its C library faked (``tests/nvml_library.py``), the real
library on this GPU-less machine, and the launcher's fallback to the simulated pool."""

from __future__ import annotations

import logging

import dask.config
import pynvml
import pytest
from conftest import local_config, nvml_sees_a_gpu, repo_config_data
from nvml_library import FakeDevice, real_pynvml_on

from altlas_dask.gpus import GpuUnavailableError, NvmlInventory
from altlas_dask.gpus.device import NvmlGpu
from altlas_dask.gpus.nvml import NvmlStatus, nvml_status, parse_visible_devices
from altlas_dask.ops.launcher import detect_gpus
from altlas_dask.worker.binding import GpuWorkerPlugin

GIB = 1024**3
MIB = 1024**2


def pascal() -> FakeDevice:
    return FakeDevice("Tesla P100-PCIE-16GB", "GPU-p100", (6, 0), 16 * GIB, 1 * GIB)


def ampere() -> FakeDevice:
    return FakeDevice(
        name="NVIDIA A100-SXM4-80GB",
        uuid="GPU-11111111-2222-3333-4444-555555555555",
        cc=(8, 0),
        total_bytes=80 * GIB,
        used_bytes=1536 * MIB + 123_456,  # partial MiB rounds down
        util_gpu=37,
        util_memory=12,
        temperature=64,
        power_mw=123_456,
        limit_mw=400_000,
    )


def ada() -> FakeDevice:
    return FakeDevice("NVIDIA L4", "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", (8, 9), 24 * GIB, 0, temperature=30)


def test_state_translates_nvml_units():
    inventory = NvmlInventory(nvml=real_pynvml_on([ampere()]))
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


def test_names_and_uuids_come_back_as_text():
    state = NvmlInventory(nvml=real_pynvml_on([ada()])).state(0)
    assert state.name == "NVIDIA L4"
    assert state.uuid == "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    assert state.compute_capability == "8.9"
    assert state.memory_total_mb == 24576


def test_gpus_lists_every_device_in_index_order():
    inventory = NvmlInventory(nvml=real_pynvml_on([ampere(), ada()]))
    assert [(g.id, g.name) for g in inventory.gpus()] == [(0, "NVIDIA A100-SXM4-80GB"), (1, "NVIDIA L4")]


def test_min_compute_capability_filters_devices():
    nv = real_pynvml_on([pascal(), ampere(), ada()])
    inventory = NvmlInventory(min_compute_capability=7.0, nvml=nv)
    assert inventory.indices() == [1, 2]
    assert [g.id for g in inventory.gpus()] == [1, 2]  # ids stay the NVML indices
    assert [g.id for g in NvmlInventory(min_compute_capability=8.5, nvml=nv).gpus()] == [2]
    assert [g.id for g in NvmlInventory(min_compute_capability=0.0, nvml=nv).gpus()] == [0, 1, 2]


def test_no_device_meeting_the_minimum_is_unavailable():
    inventory = NvmlInventory(min_compute_capability=7.0, nvml=real_pynvml_on([pascal()]))
    with pytest.raises(GpuUnavailableError, match="min_compute_capability"):
        inventory.gpus()


def test_power_not_supported_reads_as_zero():
    device = ampere()
    device.power_mw = None
    device.limit_mw = None
    state = NvmlInventory(nvml=real_pynvml_on([device])).state(0)
    assert state.power_usage_w == 0.0
    assert state.power_limit_w == 0.0
    assert state.unknown == ("power_usage_w", "power_limit_w")
    assert state.temperature_c == 64.0  # the rest still reads


def test_other_nvml_errors_are_not_swallowed():
    device = ampere()
    device.broken["nvmlDeviceGetPowerUsage"] = pynvml.NVML_ERROR_GPU_IS_LOST
    nv = real_pynvml_on([device])
    with pytest.raises(nv.NVMLError_GpuIsLost):
        NvmlInventory(nvml=nv).state(0)


def test_power_limit_is_read_through_the_function_nvidia_ml_py_has():
    """On the old name (nvmlDeviceGetEnforcedPowerManagementLimit) the real module raised AttributeError."""
    device = ampere()
    device.limit_mw = 700_000
    assert NvmlInventory(nvml=real_pynvml_on([device])).state(0).power_limit_w == pytest.approx(700.0)


def test_hot_device_is_critical_at_the_configured_maximum():
    device = ampere()
    device.temperature = 88
    assert NvmlInventory(nvml=real_pynvml_on([device])).state(0).health_status == "critical"
    assert NvmlInventory(max_temperature=95, nvml=real_pynvml_on([device])).state(0).health_status == "warning"


@pytest.mark.parametrize(
    "code", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED, pynvml.NVML_ERROR_NO_PERMISSION]
)
def test_nvml_init_failure_is_gpu_unavailable(code):
    nv = real_pynvml_on([ampere()], init_error=code)
    with pytest.raises(GpuUnavailableError, match="NVML is not usable here") as info:
        NvmlInventory(nvml=nv)
    assert isinstance(info.value.__cause__, nv.NVMLError)
    assert nv.nvmlLib.calls == ["init"]


def test_no_device_is_gpu_unavailable():
    with pytest.raises(GpuUnavailableError, match="no GPU"):
        NvmlInventory(nvml=real_pynvml_on([]))


# -- one initialisation per process, and its state ------------------------------------------------


def test_nvml_is_initialised_once_per_process_and_reports_ok():
    nv = real_pynvml_on([ampere()])
    assert nvml_status(nv) is NvmlStatus.OK
    NvmlInventory(nvml=nv)
    NvmlInventory(nvml=nv).gpus()
    assert nv.nvmlLib.calls == ["init"]


def test_a_forked_child_initialises_nvml_again():
    import multiprocessing

    nv = real_pynvml_on([ampere()])
    assert nvml_status(nv) is NvmlStatus.OK
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=lambda: queue.put((nvml_status(nv).value, list(nv.nvmlLib.calls))))
    child.start()
    status, calls = queue.get(timeout=30)
    child.join(timeout=30)
    assert (status, calls) == ("ok", ["init", "init"])  # NVML handles do not survive a fork: the child inits
    assert nv.nvmlLib.calls == ["init"]  # the parent's stays valid


def test_nvml_states_no_library_and_no_devices():
    no_library = real_pynvml_on([ampere()], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    assert nvml_status(no_library) is NvmlStatus.NO_LIBRARY
    assert nvml_status(real_pynvml_on([])) is NvmlStatus.NO_DEVICES


def test_dask_setting_disables_nvml_without_initialising_it():
    nv = real_pynvml_on([ampere()])
    with dask.config.set({"distributed.diagnostics.nvml": False}):
        assert nvml_status(nv) is NvmlStatus.DISABLED_BY_CONFIG
        with pytest.raises(GpuUnavailableError, match="distributed.diagnostics.nvml"):
            NvmlInventory(nvml=nv)
    assert nv.nvmlLib.calls == []  # never initialised
    assert nvml_status(nv) is NvmlStatus.OK  # the setting back on: NVML starts


def test_detect_gpus_names_the_dask_setting_when_it_disables_nvml(caplog):
    with dask.config.set({"distributed.diagnostics.nvml": False}), caplog.at_level(logging.WARNING):
        gpus, simulated = detect_gpus(local_config())
    assert simulated is True and len(gpus) == 4
    assert any("distributed.diagnostics.nvml" in r.getMessage() for r in caplog.records)


# -- MIG slices are devices ------------------------------------------------------------------------


def mig_slice(n: int, gib: int) -> FakeDevice:
    return FakeDevice(
        f"NVIDIA A100-SXM4-40GB MIG {gib}g.{gib * 5}gb",
        f"MIG-{n:08d}-aaaa-bbbb-cccc-dddddddddddd",
        (8, 0),
        gib * 5 * GIB,
        n * MIB,
        util_gpu=None,  # MIG slices answer 'not supported' for utilization and temperature
        temperature=None,
        cc_supported=False,
    )


def test_mig_slices_are_enumerated_as_schedulable_devices():
    parent = ampere()
    parent.mig = [mig_slice(1, 1), None, mig_slice(2, 3)]  # slot 1 is empty
    nv = real_pynvml_on([pascal(), parent, ada()])
    inventory = NvmlInventory(nvml=nv)
    assert [(d.id, d.nvml_index, d.mig_index, d.uuid[:12]) for d in inventory.devices] == [
        (0, 0, None, "GPU-p100"),
        (1, 1, 0, "MIG-00000001"),
        (2, 1, 2, "MIG-00000002"),
        (3, 2, None, "GPU-aaaaaaaa"),
    ]
    states = inventory.gpus()
    assert [s.id for s in states] == [0, 1, 2, 3]
    one, three = states[1], states[2]
    assert one.name == "NVIDIA A100-SXM4-40GB MIG 1g.5gb"
    assert (one.memory_total_mb, three.memory_total_mb) == (5 * 1024, 15 * 1024)  # the slice's memory
    assert one.compute_capability == "8.0"  # the parent's answer
    assert one.temperature_c == 64.0  # the board's sensor
    assert one.unknown == ("utilization_gpu", "utilization_memory")
    assert (one.status, one.health_status) == ("active", "healthy")


def test_ids_are_the_same_for_a_new_inventory_of_the_same_node():
    parent = ampere()
    parent.mig = [mig_slice(1, 1), mig_slice(2, 3)]
    first = [(s.id, s.uuid) for s in NvmlInventory(nvml=real_pynvml_on([parent, ada()])).gpus()]
    again = [(s.id, s.uuid) for s in NvmlInventory(nvml=real_pynvml_on([parent, ada()])).gpus()]
    assert first == again == [
        (0, "MIG-00000001-aaaa-bbbb-cccc-dddddddddddd"),
        (1, "MIG-00000002-aaaa-bbbb-cccc-dddddddddddd"),
        (2, "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"),
    ]


# -- CUDA_VISIBLE_DEVICES: indices, UUIDs, MIG ids ---------------------------------------------------


def test_cuda_visible_devices_entries_are_parsed():
    assert parse_visible_devices(None) == [] and parse_visible_devices(" ") == []
    assert parse_visible_devices("1, GPU-ab12,MIG-cd34") == [1, "GPU-ab12", "MIG-cd34"]
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES entry 'gpu0'"):
        parse_visible_devices("0,gpu0")


def test_visible_devices_resolve_indices_uuids_prefixes_and_mig_ids():
    parent = ampere()
    parent.mig = [mig_slice(1, 1), mig_slice(2, 3)]
    inventory = NvmlInventory(nvml=real_pynvml_on([pascal(), ada(), parent]))
    assert [d.id for d in inventory.visible(None)] == [0, 1, 2, 3]
    assert [d.id for d in inventory.visible("1")] == [1]
    assert [d.id for d in inventory.visible("GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee,0")] == [1, 0]
    assert [d.id for d in inventory.visible("GPU-aaaa")] == [1]  # a unique prefix, as CUDA accepts
    assert [d.id for d in inventory.visible("MIG-00000002-aaaa-bbbb-cccc-dddddddddddd")] == [3]
    assert [d.id for d in inventory.visible("2")] == [2]  # an index in MIG mode: its first slice
    with pytest.raises(GpuUnavailableError, match="'GPU-ffff' matches no device"):
        inventory.visible("GPU-ffff")
    with pytest.raises(GpuUnavailableError, match="matches 2 devices"):
        inventory.visible("MIG-0000000")
    with pytest.raises(GpuUnavailableError, match="GPU index 7"):
        inventory.visible("7")


def test_worker_binds_the_first_visible_device_by_uuid(monkeypatch):
    parent = ampere()
    parent.mig = [mig_slice(1, 1), mig_slice(2, 3)]
    inventory = NvmlInventory(nvml=real_pynvml_on([pascal(), parent]))
    device = NvmlGpu(inventory.visible("MIG-00000002-aaaa-bbbb-cccc-dddddddddddd,0")[0].id, inventory)
    assert (device.index, device.uuid) == (2, "MIG-00000002-aaaa-bbbb-cccc-dddddddddddd")
    assert device.state().memory_total_mb == 15 * 1024


# -- fields a board does not support, and driver errors at run time ----------------------------------


def plugin_on(inventory: NvmlInventory, ref: int | str = 0) -> GpuWorkerPlugin:
    """The worker plugin reading a real-GPU device through ``inventory`` (no Dask worker needed)."""
    plugin = GpuWorkerPlugin(local_config())
    plugin.device = NvmlGpu(ref, inventory)
    return plugin


def test_board_without_temperature_or_utilization_is_active_and_healthy():
    board = ampere()
    board.temperature = None
    board.util_gpu = None
    inventory = NvmlInventory(nvml=real_pynvml_on([board]))
    state = plugin_on(inventory).current_state()
    assert state.unknown == ("utilization_gpu", "utilization_memory", "temperature_c")  # in GpuState field order
    assert (state.status, state.health_status) == ("active", "healthy")  # unknown is not failed
    assert state.memory_total_mb == 81920 and state.power_usage_w == pytest.approx(123.456)  # the rest reads


def test_board_without_memory_information_reports_memory_unknown():
    board = ampere()
    board.memory_supported = False
    state = NvmlInventory(nvml=real_pynvml_on([board])).state(0)
    assert state.unknown == ("memory_total_mb", "memory_used_mb")
    assert state.status == "active"


def test_driver_error_at_run_time_reports_the_gpu_failed_and_it_comes_back():
    board = ampere()
    plugin = plugin_on(NvmlInventory(nvml=real_pynvml_on([board])))
    assert plugin.current_state().status == "active"
    board.error = pynvml.NVML_ERROR_GPU_IS_LOST
    lost = plugin.current_state()
    assert (lost.status, lost.health_status) == ("error", "critical")
    assert lost.uuid == "GPU-11111111-2222-3333-4444-555555555555" and lost.id == 0  # still the same GPU
    assert "GPU is lost" in lost.name
    board.error = pynvml.NVML_ERROR_UNKNOWN  # a driver hiccup: also a failure while it lasts
    assert plugin.current_state().status == "error"
    board.error = None
    assert plugin.current_state().status == "active"


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
    with caplog.at_level(logging.WARNING, logger="altlas_dask.ops.launcher"):
        gpus, simulated = detect_gpus(config)
    assert simulated is True
    assert [g.name for g in gpus] == ["Simulated A100 80GB"] * 2 + ["Simulated T4 16GB"] * 2
    warnings = [r for r in caplog.records if r.name == "altlas_dask.ops.launcher" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "falling back to the simulated GPU pool" in warnings[0].getMessage()


def test_detect_gpus_skips_nvml_when_simulating_or_detection_is_off(caplog):
    with caplog.at_level(logging.WARNING, logger="altlas_dask.ops.launcher"):
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
