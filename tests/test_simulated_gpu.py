"""The virtual GPU, in process (no Dask): memory, modelled compute, telemetry and injected faults."""

from __future__ import annotations

import threading

import pynvml
import pytest
from conftest import local_config, repo_config_data, wait_for

from altlas_dask.config import FaultSpec, SimulatedGpuSpec
from altlas_dask.gpus import GpuFaultError, GpuOutOfMemoryError, SimulatedGpu, SimulatedInventory
from altlas_dask.gpus.simulated import simulated_uuid

SPEC = SimulatedGpuSpec(
    name="Test GPU 1GB",
    memory_mb=1000,
    compute_capability="8.0",
    speed_gflops=1000.0,
    power_limit_w=300.0,
    idle_power_w=30.0,
    idle_temperature_c=35.0,
    max_load_temperature_c=75.0,
)


@pytest.fixture
def gpu() -> SimulatedGpu:
    return SimulatedGpu(0, SPEC, max_temperature=85.0)


def run_in_thread(gpu: SimulatedGpu, work_gflop: float) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target() -> None:
        try:
            out["seconds"] = gpu.run(work_gflop)
        except BaseException as exc:  # surfaced by the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


# -- idle state --------------------------------------------------------------------------------


def test_idle_state_reads_like_nvml(gpu):
    state = gpu.state()
    assert state.id == 0
    assert state.uuid == gpu.uuid and state.uuid.startswith("GPU-")
    assert state.name == "Test GPU 1GB"
    assert state.compute_capability == "8.0"
    assert state.status == "active"
    assert (state.memory_total_mb, state.memory_used_mb) == (1000, 0)
    assert state.utilization_gpu == 0.0
    assert state.temperature_c == 35.0
    assert state.power_usage_w == 30.0
    assert state.power_limit_w == 300.0
    assert state.performance_index == 1.0
    assert state.error_rate == 0.0
    assert state.health_status == "healthy"
    assert state.simulated is True


def test_uuid_is_stable_per_index_and_seed():
    assert simulated_uuid(1) == simulated_uuid(1)
    assert simulated_uuid(1) != simulated_uuid(2)
    assert simulated_uuid(1, seed=0) != simulated_uuid(1, seed=7)
    assert SimulatedGpu(2, SPEC).uuid == SimulatedGpu(2, SPEC).uuid == simulated_uuid(2)
    # the same in every process, whatever PYTHONHASHSEED: a restarted worker or another host agrees
    assert simulated_uuid(0) == "GPU-0a6b7ed1-bbe4-e0d9-1cfd-ffd60528a586"
    assert simulated_uuid(0, seed=7) == "GPU-1c266a0c-386d-f24e-c9ed-e9421fcb2ecc"


# -- memory ----------------------------------------------------------------------------------


def test_reserve_and_release_memory(gpu):
    with gpu.reserve(600):
        state = gpu.state()
        assert state.memory_used_mb == 600
        assert state.utilization_memory == 60.0
        assert state.active_requests == 1
        with gpu.reserve(400):  # exactly fills the device
            assert gpu.state().memory_used_mb == 1000
            assert gpu.state().active_requests == 2
        assert gpu.state().memory_used_mb == 600
    state = gpu.state()
    assert state.memory_used_mb == 0
    assert state.active_requests == 0


def test_exceeding_memory_raises_a_cuda_like_out_of_memory_error(gpu):
    with gpu.reserve(600), pytest.raises(GpuOutOfMemoryError) as info, gpu.reserve(500):
        pytest.fail("the second reservation does not fit")
    error = info.value
    assert str(error).startswith("CUDA out of memory. Tried to allocate 500 MiB")
    assert "GPU 0" in str(error)
    assert "1000 MiB total capacity" in str(error)
    assert "600 MiB already allocated" in str(error)
    assert "400 MiB free" in str(error)
    assert (error.gpu, error.requested_mb, error.total_mb, error.used_mb) == (0, 500, 1000, 600)
    # the failed reservation took nothing
    assert gpu.state().memory_used_mb == 0
    with gpu.reserve(1000):
        assert gpu.state().memory_used_mb == 1000


def test_a_single_reservation_larger_than_the_device_fails(gpu):
    with pytest.raises(GpuOutOfMemoryError, match="Tried to allocate 1001 MiB"), gpu.reserve(1001):
        pass
    assert gpu.state().memory_used_mb == 0


def test_memory_is_released_when_the_block_raises(gpu):
    with pytest.raises(ZeroDivisionError), gpu.reserve(1000):
        assert gpu.state().memory_used_mb == 1000
        _ = 1 / 0
    state = gpu.state()
    assert state.memory_used_mb == 0
    assert state.active_requests == 0
    with gpu.reserve(1000):  # all of it is usable again
        pass


def test_out_of_memory_error_survives_pickling():
    import pickle

    error = GpuOutOfMemoryError(gpu=2, requested_mb=10, total_mb=5, used_mb=1)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is GpuOutOfMemoryError
    assert (copy.gpu, copy.requested_mb, copy.total_mb, copy.used_mb) == (2, 10, 5, 1)
    assert str(copy) == str(error)
    fault = pickle.loads(pickle.dumps(GpuFaultError(1, "boom")))
    assert (type(fault), fault.gpu, fault.reason, str(fault)) == (GpuFaultError, 1, "boom", "CUDA error on GPU 1: boom")


# -- compute and telemetry ------------------------------------------------------------------


def test_run_returns_the_modelled_device_seconds(gpu):
    assert gpu.run(10.0) == pytest.approx(10.0 / 1000.0)
    assert gpu.run(0.0) == 0.0


def test_utilization_power_and_temperature_rise_while_a_kernel_runs(gpu):
    idle = gpu.state()
    thread, out = run_in_thread(gpu, 300.0)  # 0.3 s of modelled compute
    busy = wait_for(
        lambda: (s := gpu.state()).utilization_gpu > 0 and s, timeout=10, interval=0.01, what="utilization > 0"
    )
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert "error" not in out
    assert out["seconds"] == pytest.approx(0.3)
    assert busy.utilization_gpu > 0
    assert busy.power_usage_w > idle.power_usage_w
    assert busy.power_usage_w <= SPEC.power_limit_w
    after = gpu.state()
    assert after.temperature_c > idle.temperature_c  # heat lingers over the thermal window
    assert after.temperature_c <= SPEC.max_load_temperature_c


def test_busy_counts_real_work_as_device_time(gpu):
    assert gpu.state().utilization_gpu == 0.0
    with gpu.busy():  # e.g. a torch call on the CPU stand-in
        busy = wait_for(
            lambda: (s := gpu.state()).utilization_gpu > 0 and s, timeout=10, interval=0.01, what="utilization > 0"
        )
        assert busy.power_usage_w > SPEC.idle_power_w


def test_kernels_time_share_the_device_and_waiting_ones_are_queued(gpu):
    with gpu.busy():  # hold the device
        thread, out = run_in_thread(gpu, 1.0)
        wait_for(lambda: gpu.state().queued_requests == 1, timeout=10, interval=0.01, what="a queued kernel")
        assert thread.is_alive()  # it cannot start while the device is taken
    thread.join(timeout=30)
    assert out == {"seconds": pytest.approx(0.001)}
    assert gpu.state().queued_requests == 0


# -- faults -----------------------------------------------------------------------------------


def test_lost_gpu_fails_nvml_queries_and_kernels(gpu):
    gpu.inject("lost")
    assert gpu.lost
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        gpu.state()
    with pytest.raises(GpuFaultError, match="GPU is lost") as info:
        gpu.run(1.0)
    assert info.value.gpu == 0
    with pytest.raises(GpuFaultError), gpu.reserve(10):
        pass
    gpu.clear_faults()
    assert not gpu.lost
    assert gpu.state().status == "active"
    assert gpu.run(1.0) == pytest.approx(0.001)


def test_error_rate_fault_fails_kernels_and_shows_in_health(gpu):
    gpu.run(1.0)
    assert gpu.state().error_rate == 0.0
    gpu.inject("error_rate", error_rate=1.0)
    for _ in range(3):
        with pytest.raises(GpuFaultError, match="ECC"):
            gpu.run(1.0)
    state = gpu.state()
    assert state.error_rate == pytest.approx(0.75)  # 3 failures in the last 4 kernels
    assert state.error_rate > 0
    assert state.health_status == "critical"
    gpu.clear_faults()
    assert gpu.state().error_rate == 0.0
    assert gpu.run(1.0) == pytest.approx(0.001)


def test_error_rate_zero_never_fails(gpu):
    gpu.inject("error_rate", error_rate=0.0)
    for _ in range(5):
        gpu.run(0.1)
    assert gpu.state().error_rate == 0.0


def test_thermal_throttle_runs_hot_and_at_half_speed(gpu):
    normal = gpu.run(10.0)
    gpu.inject("thermal_throttle")
    state = gpu.state()
    assert state.temperature_c > gpu.max_temperature
    assert state.health_status == "critical"
    assert state.performance_index == 0.5
    throttled = gpu.run(10.0)
    assert throttled == pytest.approx(2 * normal)
    assert throttled == pytest.approx(10.0 / 500.0)


def test_fault_scheduled_in_the_future_is_not_active_yet(gpu):
    gpu.inject("lost", at_s=3600)
    gpu.inject("thermal_throttle", at_s=3600)
    assert not gpu.lost
    state = gpu.state()
    assert state.status == "active"
    assert state.temperature_c < gpu.max_temperature
    assert state.health_status == "healthy"
    assert gpu.run(10.0) == pytest.approx(0.01)


def test_faults_from_config_apply_only_to_their_gpu():
    faults = (
        FaultSpec(gpu=1, kind="lost"),
        FaultSpec(gpu=2, kind="thermal_throttle", at_s=3600),
        FaultSpec(gpu=3, kind="thermal_throttle"),
    )
    devices = [SimulatedGpu(i, SPEC, faults=faults) for i in range(4)]
    assert devices[0].state().health_status == "healthy"
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        devices[1].state()
    assert devices[2].state().health_status == "healthy"  # not yet
    assert devices[3].state().health_status == "critical"


def test_unknown_fault_kind_is_rejected(gpu):
    with pytest.raises(ValueError, match="kind"):
        gpu.inject("melted")


# -- the pool -----------------------------------------------------------------------------------


def test_inventory_from_cluster_yaml_is_heterogeneous(repo_config):
    pool = SimulatedInventory(repo_config)
    gpus = pool.gpus()
    assert [g.id for g in gpus] == [0, 1, 2, 3]
    assert [g.name for g in gpus] == ["Simulated A100 80GB"] * 2 + ["Simulated T4 16GB"] * 2
    assert [g.memory_total_mb for g in gpus] == [81920, 81920, 16384, 16384]
    assert [g.compute_capability for g in gpus] == ["8.0", "8.0", "7.5", "7.5"]
    assert [g.power_limit_w for g in gpus] == [400, 400, 70, 70]
    assert [g.power_usage_w for g in gpus] == [50, 50, 10, 10]  # idle: the configured idle power
    assert [d.spec.speed_gflops for d in pool.devices] == [2000, 2000, 500, 500]
    assert all(g.simulated and g.health_status == "healthy" for g in gpus)
    assert len({g.uuid for g in gpus}) == 4
    assert [g.uuid for g in gpus] == [g.uuid for g in SimulatedInventory(repo_config).gpus()]  # stable


@pytest.mark.parametrize(
    ("count", "names"),
    [
        (1, ["A100"]),
        (3, ["A100", "A100", "T4"]),
        (6, ["A100", "A100", "T4", "T4", "A100", "A100"]),
    ],
)
def test_simulate_n_cycles_through_the_configured_models(repo_config, count, names):
    gpus = SimulatedInventory(repo_config, count=count).gpus()
    assert [g.id for g in gpus] == list(range(count))
    assert [g.name.split()[1] for g in gpus] == names


def test_min_compute_capability_drops_gpus(repo_config):
    data = repo_config_data()
    data["gpu"]["detection"]["min_compute_capability"] = 8.0
    pool = SimulatedInventory(local_config(data))
    assert [(g.id, g.compute_capability) for g in pool.gpus()] == [(0, "8.0"), (1, "8.0")]
    data["gpu"]["detection"]["min_compute_capability"] = 9.0
    assert SimulatedInventory(local_config(data)).gpus() == []


def test_pool_devices_use_the_configured_max_temperature_and_seed():
    data = repo_config_data()
    data["gpu"]["detection"]["max_temperature"] = 70
    data["simulation"]["seed"] = 5
    data["simulation"]["faults"] = [{"gpu": 2, "kind": "thermal_throttle"}]
    pool = SimulatedInventory(local_config(data))
    assert pool.devices[0].max_temperature == 70
    assert pool.devices[0].uuid == simulated_uuid(0, seed=5)
    hot = pool.devices[2].state()
    assert hot.temperature_c > 70 and hot.health_status == "critical"
    assert pool.devices[3].state().health_status == "healthy"
