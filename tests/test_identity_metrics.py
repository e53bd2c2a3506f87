"""Bounded Prometheus label values (scheduler_plugins.metrics.LabelPolicy)."""

from __future__ import annotations

from altlas_dask.config import build_config
from scheduler_plugins.metrics import LabelPolicy


def test_models_come_from_configured_task_types():
    labels = LabelPolicy(build_config({"gpu": {"multi_gpu": {"task_specific_mappings": {"segmentation": "gpu_0"}}}}))
    assert labels.model("segmentation") == "segmentation"
    assert labels.model("inference") == "inference"  # the default task type
    assert labels.model("generate") == "generate"  # serving.batching's model
    assert labels.model("x" * 100) == "other"
    assert labels.model(None) == "other"


def test_users_are_configured_or_overridden_or_behind_the_switch():
    overrides: dict[str, dict] = {}
    config = build_config({"quotas": {"admins": ["root"], "users": {"ana": {"weight": 2}}}})
    labels = LabelPolicy(config, overrides)
    assert [labels.user(u) for u in ("ana", "root", "bob0", "bob1")] == ["ana", "root", "other", "other"]
    overrides["bob0"] = {"requests_per_minute": 3}  # an admin's set_quota at run time
    assert labels.user("bob0") == "bob0"
    everyone = LabelPolicy(build_config({"metrics": {"all_user_labels": True}}))
    assert everyone.user("bob1") == "bob1"


def test_strategies_are_built_in_or_configured_custom_ones():
    labels = LabelPolicy(build_config({"gpu": {"multi_gpu": {"custom_strategies": {"mine": "os.path:join"}}}}))
    assert [labels.strategy(s) for s in ("least_loaded", "specific_gpu", "mine", "none")] == [
        "least_loaded",
        "specific_gpu",
        "mine",
        "none",
    ]
    assert {labels.strategy(f"made_up_{i}") for i in range(50)} == {"other"}
