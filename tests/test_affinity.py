"""gpu_options.affinity: a GPU that served the key lately is preferred while its load stays within the bound."""

from __future__ import annotations

import math

from core_helpers import Driver, make_core, placed

from altlas_dask.scheduling.affinity import AffinityBook

FACTOR = 1.25


def test_the_warm_gpu_takes_its_key_until_it_would_pass_the_bounded_load() -> None:
    core = make_core({"gpu": {"multi_gpu": {"max_concurrent_tasks_per_gpu": 8, "affinity_load_factor": FACTOR}}})
    d = Driver(core, gpus=2)
    assert placed(d.submit("a", affinity="conv-1")) == {"a": 0}
    assert placed(d.submit("b", affinity="conv-2")) == {"b": 1}
    on = {0: 1, 1: 1}
    for n in range(8):
        key = f"turn-{n}"
        # Mirrokni et al.: a GPU may hold at most ceil(factor x (tasks + this one) / GPUs)
        bound = math.ceil(FACTOR * (sum(on.values()) + 1) / 2)
        got = placed(d.submit(key, affinity="conv-1"))
        if on[0] + 1 > bound:  # over the bound: the strategy's own choice among all (the other GPU here)
            assert got == {key: 1} and "affinity" not in core.tasks[key].decision.reason, (n, on, bound)
            break
        assert got == {key: 0}, (n, on, bound)
        reason = core.tasks[key].decision.reason
        assert f"affinity: GPU 0 served 'conv-1' lately, within the load bound ({bound} tasks" in reason
        on[0] += 1
    else:
        raise AssertionError(f"conv-1 never left GPU 0: {on}")


def test_without_affinity_or_with_factor_zero_nothing_is_preferred() -> None:
    core = make_core({"gpu": {"multi_gpu": {"max_concurrent_tasks_per_gpu": 8, "affinity_load_factor": 0}}})
    d = Driver(core, gpus=2)
    d.submit("a", affinity="k")
    assert placed(d.submit("b", affinity="k")) == {"b": 1}  # least work: the other GPU


def test_the_book_keeps_the_latest_keys_and_gpus() -> None:
    book = AffinityBook(keys=2, per_key=2)
    for key, gpu in (("a", 0), ("a", 1), ("a", 2), ("b", 0), ("c", 3)):
        book.served(key, gpu)
    assert book.gpus("a") == frozenset()  # least recent key dropped
    assert book.gpus("b") == {0} and book.gpus("c") == {3} and len(book) == 2
    book.served("b", 1)
    book.served("b", 2)
    assert book.gpus("b") == {1, 2} and book.gpus(None) == frozenset()
