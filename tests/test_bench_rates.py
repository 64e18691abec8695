"""The benchmark's sustained rate, CPU clock and case sizes (benchmarks/pipeline.py), on made-up
inputs."""

from __future__ import annotations

import os
import time
from argparse import Namespace

import pytest

from benchmarks.pipeline import CpuClock, cpu_ticks, sustained_rate, titles_for


def test_a_steady_middle_is_measured_without_a_slow_start_and_tail() -> None:
    start = [0.0] * 100  # a first write of 100 rows at t=0
    middle = [1.0 + i / 1000 for i in range(800)]  # 1,000 rows/s from t=1
    tail = [10.0] * 100  # a last write much later
    # the whole case: 1,000 rows over 10 s, 100 rows/s
    assert sustained_rate(start + middle + tail) == pytest.approx(1000, rel=0.01)


def test_writes_all_at_once_have_no_rate() -> None:
    assert sustained_rate([5.0] * 50) is None


def test_cpu_ticks_are_read_past_a_process_name_holding_spaces_and_parentheses() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime ...
    stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 20 10 20 0 1 0\n"
    assert cpu_ticks(stat) == 10
    assert cpu_ticks(stat, children=True) == 40  # with the reaped children's


def test_the_cpu_clock_counts_a_workers_busy_seconds() -> None:
    before = CpuClock.read([os.getpid()])
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    spent = CpuClock.read([os.getpid()]).since(before, articles=1)
    assert spent["worker_cpu_us"] >= 0.25e6


def test_per_process_cases_give_each_worker_process_the_same_share() -> None:
    titles = [f"t{i}" for i in range(100)]
    whole = Namespace(model_articles=10, per_process=False)
    each = Namespace(model_articles=10, per_process=True)
    assert titles_for(titles, 8, whole) == titles[:10]
    assert titles_for(titles, 8, each) == titles[:80]
    assert titles_for(titles, 2, each, count=30) == titles[:60]  # --null-articles
