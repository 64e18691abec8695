"""The benchmark's sustained rate (benchmarks/pipeline.py): pure, on made-up write times."""

from __future__ import annotations

import pytest

from benchmarks.pipeline import sustained_rate


def test_a_steady_middle_is_measured_without_a_slow_start_and_tail() -> None:
    start = [0.0] * 100  # a first write of 100 rows at t=0
    middle = [1.0 + i / 1000 for i in range(800)]  # 1,000 rows/s from t=1
    tail = [10.0] * 100  # a last write much later
    # the whole case: 1,000 rows over 10 s, 100 rows/s
    assert sustained_rate(start + middle + tail) == pytest.approx(1000, rel=0.01)


def test_writes_all_at_once_have_no_rate() -> None:
    assert sustained_rate([5.0] * 50) is None
