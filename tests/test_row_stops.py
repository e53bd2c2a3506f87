"""Stopping one row of a batch task on a worker (altlas_dask/model/row_stops.py), without a cluster."""

from __future__ import annotations

from altlas_dask.model import row_stops
from altlas_dask.model.row_stops import EitherStop, stop_row
from altlas_dask.model.row_stops import row_stops as rows_of


def test_a_stop_reaches_a_running_rows_flag_and_only_that_row():
    with rows_of("batch-a", 3) as flags:
        assert stop_row("batch-a", 1) is True
        assert [f.is_set() for f in flags] == [False, True, False]
    assert "batch-a" not in row_stops._RUNNING  # forgotten once the batch ends


def test_a_stop_asked_before_the_batch_starts_is_kept_for_it():
    assert stop_row("batch-b", 2) is False
    with rows_of("batch-b", 3) as flags:
        assert [f.is_set() for f in flags] == [False, False, True]
    with rows_of("batch-b", 3) as again:  # used once: a later run of the key starts clean
        assert not any(f.is_set() for f in again)


def test_early_stops_are_bounded():
    for i in range(row_stops.MAX_EARLY_STOPS + 5):
        stop_row(f"never-runs-{i}", 0)
    assert len(row_stops._EARLY) == row_stops.MAX_EARLY_STOPS
    assert ("never-runs-0", 0) not in row_stops._EARLY  # the oldest went first


def test_either_stop_is_set_by_the_task_or_the_row():
    import threading

    task, row = threading.Event(), threading.Event()
    either = EitherStop(task, row)
    assert not either.is_set()
    row.set()
    assert either.is_set()
    row.clear()
    task.set()
    assert either.is_set()
    assert not EitherStop(None, threading.Event()).is_set()
