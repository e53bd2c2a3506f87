"""gpu_options validation: every bad value gets an error naming the field and the value."""

from __future__ import annotations

import pytest

from altlas_dask.options import GpuOptions, GpuOptionsError
from altlas_dask.scheduling.strategies import TaskRequest


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"strategy": "fast-est"}, "gpu_options.strategy: not a strategy name"),
        ({"priority": 0}, "gpu_options.priority"),
        ({"priority": 6}, "gpu_options.priority"),
        ({"priority": "high"}, "gpu_options.priority"),
        ({"memory_mb": -1}, "gpu_options.memory_mb"),
        ({"memory_mb": 10**12}, "gpu_options.memory_mb"),
        ({"specific_gpu_id": -2}, "gpu_options.specific_gpu_id"),
        ({"specific_gpu_id": "gpu_0;drop"}, "gpu_options.specific_gpu_id"),
        ({"specific_gpu_id": True}, "gpu_options.specific_gpu_id"),
        ({"timeout": 0}, "gpu_options.timeout"),
        ({"timeout": -5}, "gpu_options.timeout"),
        ({"retries": -1}, "gpu_options.retries"),
        ({"user": ""}, "gpu_options.user"),
        ({"user": "a b; drop"}, "gpu_options.user"),
        ({"task_type": ""}, "gpu_options.task_type"),
        ({"min_compute_capability": "eight"}, "compute capability"),
        ({"gpu": 1}, "gpu_options.gpu: unknown option"),
    ],
)
def test_bad_values_are_rejected_with_the_field_named(options, message):
    with pytest.raises(GpuOptionsError) as info:
        GpuOptions.parse(options)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_not_a_mapping_is_rejected():
    with pytest.raises(GpuOptionsError, match="must be a dict"):
        GpuOptions.parse(["least_loaded"])


def test_valid_options_round_trip_through_the_wire_format():
    options = GpuOptions.parse(
        {
            "strategy": "hybrid",
            "specific_gpu_id": "gpu_2",
            "priority": 5,
            "memory_mb": 2048,
            "user": "ana",
            "task_type": "text_generation",
            "timeout": 30,
            "retries": 1,
            "min_compute_capability": "8.6",
        }
    )
    assert options.specific_gpu_id == 2 and options.min_compute_capability == pytest.approx(8.6)
    assert GpuOptions.parse(options.wire()) == options
    request = TaskRequest.from_options(options, key="k")
    assert (request.gpu, request.priority, request.memory_mb, request.user) == (2, 5, 2048, "ana")


def test_defaults_are_not_sent_on_the_wire():
    assert GpuOptions.parse(None).wire() == {}
    assert GpuOptions.parse({"priority": 3}).wire() == {}
