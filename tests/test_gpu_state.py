"""GpuState: health classification, the seed's health score, the API shape and the heartbeat round trip."""

from __future__ import annotations

import json

import pytest

from altlas_dask.gpus.state import GpuState, classify_health, health_score


def make_state(**changes) -> GpuState:
    base = GpuState(
        id=3,
        uuid="GPU-00000000-0000-0000-0000-000000000003",
        name="Simulated T4 16GB",
        compute_capability="7.5",
        status="active",
        memory_total_mb=16384,
        memory_used_mb=4096,
        utilization_gpu=37.5,
        utilization_memory=25.0,
        temperature_c=61.0,
        power_usage_w=42.5,
        power_limit_w=70.0,
        performance_index=0.75,
        error_rate=0.01,
        active_requests=2,
        queued_requests=1,
        uptime_s=123.9,
        health_status="healthy",
        simulated=True,
        worker="tcp://127.0.0.1:40000",
    )
    return base.with_(**changes)


# -- classify_health -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "temperature", "error_rate", "max_temperature", "expected"),
    [
        ("active", 40.0, 0.0, 85.0, "healthy"),
        ("active", 74.9, 0.0, 85.0, "healthy"),
        ("active", 75.0, 0.0, 85.0, "warning"),  # 10 degrees below the maximum
        ("active", 84.9, 0.0, 85.0, "warning"),
        ("active", 85.0, 0.0, 85.0, "critical"),  # at the maximum
        ("active", 95.0, 0.0, 85.0, "critical"),
        ("active", 40.0, 0.049, 85.0, "healthy"),
        ("active", 40.0, 0.05, 85.0, "warning"),
        ("active", 40.0, 0.49, 85.0, "warning"),
        ("active", 40.0, 0.5, 85.0, "critical"),
        ("active", 40.0, 1.0, 85.0, "critical"),
        ("error", 40.0, 0.0, 85.0, "critical"),  # a faulted GPU is critical whatever it reads
        ("active", 59.9, 0.0, 70.0, "healthy"),  # the maximum is configurable
        ("active", 60.0, 0.0, 70.0, "warning"),
        ("active", 70.0, 0.0, 70.0, "critical"),
    ],
)
def test_classify_health_thresholds(status, temperature, error_rate, max_temperature, expected):
    got = classify_health(
        status=status, temperature_c=temperature, error_rate=error_rate, max_temperature=max_temperature
    )
    assert got == expected


def test_classify_health_default_maximum_is_85():
    assert classify_health(status="active", temperature_c=84.0, error_rate=0.0) == "warning"
    assert classify_health(status="active", temperature_c=85.0, error_rate=0.0) == "critical"


# -- health_score (seed 001 section 4.1) -----------------------------------------------------------


def seed_health_score(temperature: float, power: float, limit: float, error_rate: float) -> float:
    """The seed's calculate_health_score, written out independently of the implementation."""
    if temperature < 50:
        temp_score = 1.0
    elif temperature < 100:
        temp_score = 1.0 - (temperature - 50) / 50
    else:
        temp_score = 0.0
    power_score = max(1.0 - power / limit, 0.0) if limit > 0 else 0.5
    return 0.4 * temp_score + 0.3 * power_score + 0.3 * (1.0 - error_rate)


@pytest.mark.parametrize(
    ("temperature", "power", "limit", "error_rate", "expected"),
    [
        (40.0, 0.0, 100.0, 0.0, 1.0),  # cool, idle, no errors
        (75.0, 50.0, 100.0, 0.1, 0.4 * 0.5 + 0.3 * 0.5 + 0.3 * 0.9),
        (50.0, 100.0, 100.0, 0.0, 0.4 + 0.0 + 0.3),  # at 50 C the temperature term is still 1.0
        (90.0, 70.0, 70.0, 1.0, 0.4 * 0.2),
        (100.0, 0.0, 100.0, 0.0, 0.0 + 0.3 + 0.3),  # 100 C and above score 0 for temperature
        (130.0, 0.0, 100.0, 0.0, 0.6),
        (40.0, 150.0, 100.0, 0.0, 0.4 + 0.0 + 0.3),  # over the power limit: clamped at 0, not negative
        (40.0, 10.0, 0.0, 0.0, 0.4 + 0.3 * 0.5 + 0.3),  # unknown power limit (NVML 'not supported')
    ],
)
def test_health_score_follows_the_seed_formula(temperature, power, limit, error_rate, expected):
    state = make_state(temperature_c=temperature, power_usage_w=power, power_limit_w=limit, error_rate=error_rate)
    assert health_score(state) == pytest.approx(expected)
    assert health_score(state) == pytest.approx(seed_health_score(temperature, power, limit, error_rate))


def test_health_score_weights_are_temperature_power_error():
    cool = make_state(temperature_c=40.0, power_usage_w=0.0, power_limit_w=100.0, error_rate=0.0)
    assert health_score(cool) - health_score(cool.with_(temperature_c=100.0)) == pytest.approx(0.4)
    assert health_score(cool) - health_score(cool.with_(power_usage_w=100.0)) == pytest.approx(0.3)
    assert health_score(cool) - health_score(cool.with_(error_rate=1.0)) == pytest.approx(0.3)


# -- derived values and shapes -----------------------------------------------------------------


def test_memory_properties():
    state = make_state(memory_total_mb=16384, memory_used_mb=4096)
    assert state.memory_free_mb == 12288
    assert state.memory_used_ratio == pytest.approx(0.25)
    assert make_state(memory_used_mb=20000).memory_free_mb == 0  # never negative
    assert make_state(memory_total_mb=0, memory_used_mb=0).memory_used_ratio == 1.0  # unreadable: treat as full


def test_with_returns_a_changed_copy_and_state_is_immutable():
    state = make_state()
    hotter = state.with_(temperature_c=90.0, health_status="critical")
    assert hotter.temperature_c == 90.0 and hotter.health_status == "critical"
    assert state.temperature_c == 61.0 and state.health_status == "healthy"
    with pytest.raises(AttributeError):
        state.temperature_c = 10.0  # type: ignore[misc]


def test_to_api_has_both_seeds_fields():
    api = make_state().to_api()
    assert api == {
        "id": 3,
        "gpu_id": "gpu_3",
        "uuid": "GPU-00000000-0000-0000-0000-000000000003",
        "name": "Simulated T4 16GB",
        "compute_capability": "7.5",
        "status": "active",
        "memory": {"total": 16384, "used": 4096, "free": 12288},
        "utilization": 37.5,
        "memory_utilization": 25.0,
        "memory_used": 4096 * 1024 * 1024,
        "memory_total": 16384 * 1024 * 1024,
        "task_count": 2,
        "temperature": 61.0,
        "power": {"usage": 42.5, "limit": 70.0},
        "performance_index": 0.75,
        "error_rate": 0.01,
        "active_requests": 2,
        "queued_requests": 1,
        "uptime": 123,
        "health_status": "healthy",
        "simulated": True,
        "worker": "tcp://127.0.0.1:40000",
    }
    assert isinstance(api["uptime"], int)
    assert json.loads(json.dumps(api)) == api  # JSON-serialisable as is


def test_to_dict_is_flat_and_round_trips():
    state = make_state()
    data = state.to_dict()
    assert data["memory_total_mb"] == 16384
    assert data["worker"] == "tcp://127.0.0.1:40000"
    assert all(not isinstance(v, dict | list) for v in data.values())  # msgpack-friendly, flat
    assert GpuState.from_dict(data) == state
    assert GpuState.from_dict(json.loads(json.dumps(data))) == state


def test_unknown_fields_survive_the_heartbeat_and_reach_the_api():
    state = make_state().with_(unknown=("temperature_c", "utilization_gpu"))
    wire = json.loads(json.dumps(state.to_dict()))  # msgpack/JSON turn the tuple into a list
    assert GpuState.from_dict(wire) == state
    assert state.to_api()["unknown_fields"] == ["temperature_c", "utilization_gpu"]  # only when some are unknown


def test_from_dict_ignores_unknown_fields_from_newer_workers():
    data = {**make_state().to_dict(), "fan_speed": 40}
    assert GpuState.from_dict(data) == make_state()


def test_from_dict_fills_defaults_for_optional_fields():
    required = {
        k: v
        for k, v in make_state().to_dict().items()
        if k
        not in {
            "performance_index",
            "error_rate",
            "active_requests",
            "queued_requests",
            "uptime_s",
            "health_status",
            "simulated",
            "worker",
        }
    }
    state = GpuState.from_dict(required)
    assert state.health_status == "healthy"
    assert state.worker is None
    assert state.simulated is False
