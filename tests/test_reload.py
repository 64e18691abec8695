"""The reload thread's retries: a promoted model that fails to load is tried ever later."""

from __future__ import annotations

import itertools
import logging
import time
from types import SimpleNamespace
from typing import cast

import pytest

from tests.helpers import wait_until
from worker.model import ModelRuntime
from worker.reload import ModelReload, retry_delay


def test_the_wait_doubles_with_each_failure_up_to_the_cap() -> None:
    assert [retry_delay(5.0, n) for n in range(6)] == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert retry_delay(120.0, 3) == 120.0  # an interval above the cap stays the interval


def test_a_failing_load_is_tried_ever_later_with_its_traceback_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[float] = []

    def watch(newest: str) -> ModelRuntime | None:
        calls.append(time.monotonic())
        if len(calls) <= 3:
            raise OSError("config.json: no such file")
        return cast(ModelRuntime, SimpleNamespace(version="v2"))

    switched: list[ModelRuntime] = []
    with caplog.at_level(logging.WARNING, logger="worker.reload"):
        reload = ModelReload(watch, switched.append, "v1", interval_s=0.05).start()
        wait_until(lambda: switched, timeout=10)
        reload.close()
    assert switched[0].version == "v2"
    # The three failures and the success (the thread goes on asking until it is closed).
    gaps = [later - earlier for earlier, later in itertools.pairwise(calls[:4])]
    # 0.05 s doubled per failure: a wait never ends early (a slow machine only adds to it)
    assert all(gap >= 0.95 * want for gap, want in zip(gaps, [0.1, 0.2, 0.4], strict=True))
    records = [r for r in caplog.records if r.name == "worker.reload"]
    assert len(records) == 3
    assert records[0].exc_info is not None
    assert all(r.exc_info is None and "again (" in r.getMessage() for r in records[1:])
