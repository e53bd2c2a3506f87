"""The shipped text-generation model: weights load, generation honours its parameters, training runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from altlas_dask.client.workloads import get_workload
from altlas_dask.model import MAX_LENGTH, char_gru


@pytest.fixture(scope="module")
def model():
    return char_gru.load_model("cpu")


def test_weights_ship_with_the_package_and_are_small():
    assert char_gru.WEIGHTS_PATH.exists()
    assert char_gru.WEIGHTS_PATH.stat().st_size < 5 * 1024 * 1024
    assert char_gru.CORPUS_PATH.stat().st_size > 40_000


def test_trained_weights_beat_chance(model):
    meta = model.meta
    assert meta["steps"] > 0
    assert meta["val_loss"] < 2.5  # chance over 96 characters is ln(96) = 4.56


def test_predict_honours_max_length(model):
    for n in (1, 17, 200):
        assert len(char_gru.predict("The sun", n, 0.7, 0, model=model)["text"]) == n


def test_same_seed_same_text_and_seeds_differ(model):
    a = char_gru.predict("Once upon a time", 80, 0.9, 42, model=model)
    b = char_gru.predict("Once upon a time", 80, 0.9, 42, model=model)
    c = char_gru.predict("Once upon a time", 80, 0.9, 43, model=model)
    assert a["text"] == b["text"]
    assert a["text"] != c["text"]
    assert a["seed"] == 42


def test_temperature_zero_is_greedy(model):
    a = char_gru.predict("And God said", 60, 0.0, 1, model=model)["text"]
    b = char_gru.predict("And God said", 60, 0.0, 999, model=model)["text"]
    assert a == b


def test_no_seed_draws_one_and_reports_it(model):
    result = char_gru.predict("x", 30, 1.0, None, model=model)
    again = char_gru.predict("x", 30, 1.0, result["seed"], model=model)
    assert again["text"] == result["text"]


def test_generated_text_is_mostly_words(model):
    text = char_gru.predict("The Fox and the ", 300, 0.5, 3, model=model)["text"]
    letters = sum(c.isalpha() or c in " \n,.;'" for c in text)
    assert letters / len(text) > 0.9
    assert text.count(" ") > 20  # words, not one long run of characters


def test_any_prompt_encodes(model):
    result = char_gru.predict("Merhaba dünya — ğüşıöç 🙂\t", 10, 0.7, 0, model=model)
    assert len(result["text"]) == 10
    assert len(char_gru.predict("", 5, 0.7, 0, model=model)["text"]) == 5


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"max_length": 0}, "max_length"),
        ({"max_length": MAX_LENGTH + 1}, "max_length"),
        ({"max_length": True}, "max_length"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 9.0}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"seed": -1}, "seed"),
        ({"text": 5}, "text"),
        ({"text": "x" * 5000}, "text"),
    ],
)
def test_bad_parameters_name_the_field(model, kwargs, field):
    args = {"text": "hi", "max_length": 5, "temperature": 0.5, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=field):
        char_gru.predict(**args, model=model)


def test_generate_is_a_registered_workload():
    workload = get_workload("generate")
    assert workload.task_type == "text_generation"
    assert set(workload.defaults) == {"text", "max_length", "temperature", "seed"}


def test_workload_outside_a_worker_says_so():
    with pytest.raises(RuntimeError, match="not running inside a Dask worker"):
        char_gru.generate("hi", 5, 0.5, 0)


def test_training_script_runs_and_its_weights_load(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    out = tmp_path / "w.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "altlas_dask.model.train", "--corpus", str(corpus), "--out", str(out)]
        + ["--max-steps", "6", "--eval-every", "3", "--hidden", "32", "--embed", "16", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "saved" in proc.stdout
    small = char_gru.load_model("cpu", out)
    assert small.meta["steps"] == 6
    assert len(char_gru.predict("the", 12, 0.5, 0, model=small)["text"]) == 12


@pytest.mark.parametrize("where", ["model", "selftest"])
def test_warm_ups_load_in_a_thread_not_on_the_workers_event_loop(monkeypatch, where):
    """``Client.run`` runs a plain function on the worker's event loop, which then sends no heartbeat until it
    returns (loading torch: seconds, and the router marks the GPU unresponsive). Both warm-ups are coroutines
    whose load runs in another thread."""
    import asyncio
    import threading

    import altlas_dask.model as model
    from altlas_dask.ops import selftest

    loaded_on: list[threading.Thread] = []

    def load(dask_worker) -> str:
        loaded_on.append(threading.current_thread())
        return "cpu"

    if where == "model":
        monkeypatch.setattr(char_gru, "warm_up", load)
        warm_up = model.warm_up
    else:
        monkeypatch.setattr(selftest, "_load_torch", load)
        warm_up = selftest._warm_up

    async def on_the_loop() -> str:
        return await warm_up(None)

    assert asyncio.iscoroutinefunction(warm_up)
    assert asyncio.run(on_the_loop()) == "cpu"
    assert loaded_on and loaded_on[0] is not threading.main_thread()
