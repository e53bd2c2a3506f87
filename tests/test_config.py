"""cluster.yaml loading, validation (errors name the key and value), overrides and routing()."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import CLUSTER_YAML, repo_config_data

from altlas_dask.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    build_config,
    cli_overrides,
    env_overrides,
    load_config,
    meets_compute_capability,
    parse_compute_capability,
    parse_gpu_ref,
)
from altlas_dask.ops.launcher import start_cluster


def write_yaml(tmp_path: Path, data: object, name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def with_key(dotted: str, value: object) -> dict:
    """The repo cluster.yaml with one key set (sections created as needed)."""
    data = repo_config_data()
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return data


# -- the repo's file ---------------------------------------------------------------


def test_repo_cluster_yaml_loads_with_its_documented_values():
    config = load_config(CLUSTER_YAML, environ={})
    gpu = config.gpu
    assert gpu.enabled is True
    assert gpu.detection.min_compute_capability == 7.0
    assert gpu.detection.memory_threshold == 0.9
    assert gpu.detection.max_temperature == 85
    assert gpu.selection.default_strategy == "single_gpu"
    assert gpu.workload.max_concurrent_tasks_per_gpu == 4
    assert gpu.workload.retry_count == 3
    assert gpu.multi_gpu.default_strategy == "earliest_finish"
    assert gpu.multi_gpu.max_concurrent_tasks_per_gpu == 8
    assert gpu.multi_gpu.task_specific_mappings == {"image_segmentation": "gpu_0", "text_generation": "gpu_1"}
    assert "hybrid" in gpu.multi_gpu.strategies
    assert config.cluster.scheduler_address == "127.0.0.1:8786"
    assert config.cluster.dashboard_address == "127.0.0.1:8787"
    assert config.cluster.simulate is None
    assert config.cluster.work_stealing is False
    pool = config.simulation.expanded()
    assert [g.name for g in pool] == ["Simulated A100 80GB"] * 2 + ["Simulated T4 16GB"] * 2
    assert [g.memory_mb for g in pool] == [81920, 81920, 16384, 16384]
    assert [g.compute_capability for g in pool] == ["8.0", "8.0", "7.5", "7.5"]
    assert config.simulation.faults == ()


def test_default_path_is_the_repo_file_and_altlas_config_env_picks_another(tmp_path):
    assert DEFAULT_CONFIG_PATH.resolve() == CLUSTER_YAML  # the package's cluster.yaml links to the repo's
    assert load_config(environ={}) == load_config(CLUSTER_YAML, environ={})
    other = write_yaml(tmp_path, with_key("gpu.multi_gpu.default_strategy", "round_robin"))
    assert load_config(environ={"ALTLAS_CONFIG": str(other)}).gpu.multi_gpu.default_strategy == "round_robin"


def test_empty_file_gives_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert load_config(path, environ={}) == build_config({})


# -- validation errors -------------------------------------------------------------------


def test_unknown_key_is_rejected_naming_the_dotted_key_and_value(tmp_path):
    path = write_yaml(tmp_path, with_key("gpu.detection.bogus_threshold", 42))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert "unknown key" in message
    assert "gpu.detection.bogus_threshold" in message
    assert "42" in message


def test_unknown_top_level_section_is_rejected(tmp_path):
    path = write_yaml(tmp_path, with_key("scheduler.port", 1))
    with pytest.raises(ConfigError, match=r"unknown key 'scheduler'"):
        load_config(path, environ={})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("gpu.workload.batch_size", "many"),
        ("gpu.enabled", "perhaps"),
        ("gpu.multi_gpu.strategies", "least_loaded"),
        ("cluster.simulate", "four"),
    ],
)
def test_wrong_type_is_rejected_naming_key_and_value(tmp_path, key, value):
    path = write_yaml(tmp_path, with_key(key, value))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert key in message
    assert repr(value) in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("gpu.detection.memory_threshold", 1.5),
        ("gpu.detection.memory_threshold", 0),
        ("gpu.multi_gpu.utilization_threshold", 2.0),
        ("gpu.detection.max_temperature", -5),
        ("gpu.workload.max_concurrent_tasks_per_gpu", 0),
        ("gpu.workload.retry_count", -1),
        ("cluster.simulate", 0),
    ],
)
def test_impossible_value_is_rejected_naming_key_and_value(tmp_path, key, value):
    path = write_yaml(tmp_path, with_key(key, value))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert key in message
    assert repr(value) in message


def test_unknown_strategy_name_is_rejected():
    with pytest.raises(ConfigError) as info:
        build_config({"gpu": {"multi_gpu": {"default_strategy": "fastest"}}})
    assert "gpu.multi_gpu.default_strategy" in str(info.value)
    assert "'fastest'" in str(info.value)


@pytest.mark.parametrize("section", ["selection", "multi_gpu"])
def test_default_strategy_must_be_one_of_the_enabled_strategies(section):
    data = with_key(f"gpu.{section}.strategies", ["round_robin", "random"])
    data["gpu"][section]["default_strategy"] = "single_gpu"
    with pytest.raises(ConfigError) as info:
        build_config(data)
    message = str(info.value)
    assert f"gpu.{section}.default_strategy='single_gpu'" in message
    assert f"gpu.{section}.strategies" in message
    # one clear line: the error names the key, it does not dump the whole configuration
    assert "Simulated A100" not in message
    assert "\n" not in message


def test_bad_task_specific_mapping_reference_is_rejected():
    data = with_key("gpu.multi_gpu.task_specific_mappings", {"image_segmentation": "gpu_0;x"})
    with pytest.raises(ConfigError) as info:
        build_config(data)
    message = str(info.value)
    assert "gpu.multi_gpu.task_specific_mappings" in message
    assert "image_segmentation" in message
    assert "'gpu_0;x'" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("simulation.gpus", [{"name": "X", "compute_capability": "eight"}]),
        ("simulation.faults", [{"gpu": 0, "kind": "melted"}]),
        ("simulation.faults", [{"gpu": 0, "kind": "error_rate", "error_rate": 1.5}]),
        ("simulation.latency", {"dispatch_s": -0.001}),
        ("simulation.gpus", [{"name": "A", "count": 4096}, {"name": "B", "count": 1}]),
    ],
)
def test_simulation_section_is_validated(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config(with_key(key, value))


def test_a_1024_gpu_pool_is_one_entry_and_up_refuses_to_start_it_as_processes():
    config = build_config(with_key("simulation.gpus", [{"name": "Simulated A100 80GB", "memory_mb": 81920,
                                                       "count": 1024}]))  # fmt: skip
    assert len(config.simulation.expanded()) == 1024
    with pytest.raises(ConfigError, match="1024 virtual GPUs.*at most 256.*altlas-dask replay"):
        start_cluster(config, router=False)  # refused before any process starts


def test_invalid_yaml_is_a_config_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("gpu:\n  detection: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- gpu\n- cluster\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path, environ={})


def test_missing_file_is_a_config_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(missing, environ={})
    assert str(missing) in str(info.value)


# -- overrides ---------------------------------------------------------------------------


def test_env_override_sets_a_nested_key():
    config = load_config(CLUSTER_YAML, environ={"ALTLAS_GPU__MULTI_GPU__DEFAULT_STRATEGY": "hybrid"})
    assert config.gpu.multi_gpu.default_strategy == "hybrid"
    assert config.routing().default_strategy == "hybrid"


def test_env_override_values_are_parsed_and_unrelated_variables_ignored():
    environ = {
        "ALTLAS_GPU__WORKLOAD__BATCH_SIZE": "16",
        "ALTLAS_GPU__MULTI_GPU__BATCH_SPLIT": "false",
        "ALTLAS_CLUSTER__SIMULATE": "3",
        "ALTLAS_GPU_INDEX": "2",  # no "__": not a config key
        "OTHER__THING": "x",
    }
    assert env_overrides(environ) == {
        "gpu": {"workload": {"batch_size": 16}, "multi_gpu": {"batch_split": False}},
        "cluster": {"simulate": 3},
    }
    config = load_config(CLUSTER_YAML, environ=environ)
    assert config.gpu.workload.batch_size == 16
    assert config.gpu.multi_gpu.batch_split is False
    assert config.cluster.simulate == 3


def test_env_override_of_unknown_key_is_rejected():
    with pytest.raises(ConfigError, match=r"unknown key 'gpu\.bogus'"):
        load_config(CLUSTER_YAML, environ={"ALTLAS_GPU__BOGUS": "1"})


def test_cli_override_sets_a_nested_key():
    config = load_config(CLUSTER_YAML, overrides=["gpu.multi_gpu.default_strategy=hybrid"], environ={})
    assert config.gpu.multi_gpu.default_strategy == "hybrid"
    assert cli_overrides(["gpu.detection.max_temperature=80", "cluster.simulate=2"]) == {
        "gpu": {"detection": {"max_temperature": 80}},
        "cluster": {"simulate": 2},
    }


def test_cli_override_of_bad_value_names_the_key():
    with pytest.raises(ConfigError) as info:
        load_config(CLUSTER_YAML, overrides=["gpu.detection.memory_threshold=1.5"], environ={})
    assert "gpu.detection.memory_threshold" in str(info.value)
    assert "1.5" in str(info.value)


@pytest.mark.parametrize("item", ["gpu.multi_gpu.default_strategy", "=hybrid"])
def test_malformed_cli_override_is_rejected(item):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(CLUSTER_YAML, overrides=[item], environ={})


def test_precedence_is_file_then_env_then_cli(tmp_path):
    path = write_yaml(tmp_path, with_key("gpu.multi_gpu.default_strategy", "round_robin"))
    env = {"ALTLAS_GPU__MULTI_GPU__DEFAULT_STRATEGY": "hybrid"}
    cli = ["gpu.multi_gpu.default_strategy=random"]

    assert load_config(path, environ={}).gpu.multi_gpu.default_strategy == "round_robin"
    assert load_config(path, environ=env).gpu.multi_gpu.default_strategy == "hybrid"
    assert load_config(path, environ={}, overrides=cli).gpu.multi_gpu.default_strategy == "random"
    assert load_config(path, environ=env, overrides=cli).gpu.multi_gpu.default_strategy == "random"
    # overriding one key keeps its siblings from the file
    assert load_config(path, environ=env, overrides=cli).gpu.multi_gpu.max_concurrent_tasks_per_gpu == 8


# -- routing() ---------------------------------------------------------------------------


def distinct_sections() -> dict:
    """Every overlapping seed 003 / seed 004 key set to a different value, so a mix-up shows."""
    data = repo_config_data()
    gpu = data["gpu"]
    gpu["detection"].update(memory_threshold=0.7, utilization_threshold=0.6, max_temperature=80)
    gpu["selection"].update(default_strategy="round_robin", strategies=["round_robin", "random"])
    gpu["workload"].update(max_concurrent_tasks_per_gpu=3, timeout=42, retry_count=5)
    gpu["multi_gpu"].update(
        default_strategy="hybrid",
        memory_threshold=0.8,
        utilization_threshold=0.85,
        max_concurrent_tasks_per_gpu=6,
        min_batch_size_per_gpu=2,
    )
    return data


def test_routing_uses_multi_gpu_when_enabled():
    policy = build_config(distinct_sections()).routing()
    assert policy.default_strategy == "hybrid"
    assert set(policy.allowed_strategies) == {
        "single_gpu",
        "round_robin",
        "least_loaded",
        "memory_optimized",
        "task_specific",
        "random",
        "hybrid",
        "earliest_finish",
    }
    assert policy.max_concurrent_tasks_per_gpu == 6
    assert policy.memory_threshold == 0.8
    assert policy.utilization_threshold == 0.85
    assert policy.batch_split is True
    assert policy.min_batch_size_per_gpu == 2
    assert policy.task_specific_mappings == {"image_segmentation": 0, "text_generation": 1}
    # detection / workload keys without a multi_gpu twin always apply
    assert policy.max_temperature == 80
    assert policy.min_compute_capability == 7.0
    assert policy.timeout == 42
    assert policy.retry_count == 5


def test_routing_falls_back_to_selection_workload_detection_when_multi_gpu_disabled():
    data = distinct_sections()
    data["gpu"]["multi_gpu"]["enabled"] = False
    policy = build_config(data).routing()
    assert policy.default_strategy == "round_robin"
    assert policy.allowed_strategies == ("round_robin", "random")
    assert policy.max_concurrent_tasks_per_gpu == 3
    assert policy.memory_threshold == 0.7
    assert policy.utilization_threshold == 0.6
    assert policy.batch_split is False
    assert policy.max_temperature == 80
    assert policy.timeout == 42
    assert policy.retry_count == 5


def test_routing_of_the_repo_file():
    policy = load_config(CLUSTER_YAML, environ={}).routing()
    assert policy.default_strategy == "earliest_finish"
    assert policy.max_concurrent_tasks_per_gpu == 8
    assert policy.memory_threshold == 0.9
    assert policy.utilization_threshold == 0.95


# -- small parsers ------------------------------------------------------------------------


@pytest.mark.parametrize(("ref", "index"), [("gpu_0", 0), ("gpu_12", 12), ("GPU-3", 3), ("1", 1), (2, 2)])
def test_parse_gpu_ref(ref, index):
    assert parse_gpu_ref(ref) == index


@pytest.mark.parametrize("ref", ["gpu_x", "cuda:0", "", "gpu_-1"])
def test_parse_gpu_ref_rejects_garbage(ref):
    with pytest.raises(ValueError, match="not a GPU reference"):
        parse_gpu_ref(ref)


def test_compute_capability_parsing_and_comparison():
    assert parse_compute_capability("8.6") == (8, 6)
    assert parse_compute_capability(7.0) == (7, 0)
    assert parse_compute_capability("9") == (9, 0)
    with pytest.raises(ValueError):
        parse_compute_capability("eight")
    assert meets_compute_capability("8.6", 7.0)
    assert meets_compute_capability("7.0", 7.0)
    assert not meets_compute_capability("6.1", 7.0)
    assert not meets_compute_capability("7.5", "8.0")
    # numeric, not lexicographic: 10.0 is newer than 9.0
    assert meets_compute_capability("10.0", 9.0)


@pytest.mark.parametrize("value", [-1, 2.5, "two"])
def test_prefetch_depth_is_validated_naming_the_key_and_value(value):
    with pytest.raises(ConfigError) as info:
        build_config(with_key("gpu.multi_gpu.prefetch_depth", value))
    assert "gpu.multi_gpu.prefetch_depth" in str(info.value) and repr(value) in str(info.value)


def test_prefetch_depth_reaches_the_routing_policy_in_multi_gpu_mode_only():
    assert build_config(with_key("gpu.multi_gpu.prefetch_depth", 3)).routing().prefetch_depth == 3
    data = with_key("gpu.multi_gpu.prefetch_depth", 3)
    data["gpu"]["multi_gpu"]["enabled"] = False
    assert build_config(data).routing().prefetch_depth == 0
