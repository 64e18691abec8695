"""Hot reload: a newly promoted model is loaded beside the serving one, then takes over.

Why a thread of its own: a load is slow (weights from disk and, on a GPU, the capture of every
CUDA graph: ~15 s for bert-base on an H200), and while the window thread loaded, as it once did,
no batch was cut: a promotion paused every worker that long. Here the serving model keeps
serving until the new one is ready, and the switch itself is one assignment.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from worker import metrics
from worker.model import ModelRuntime

log = logging.getLogger(__name__)

# Given the newest version loaded, returns a newly promoted model, loaded, or None.
Watcher = Callable[[str], "ModelRuntime | None"]
RETRY_CAP_S = 60.0  # the longest wait between checks after failed loads


def retry_delay(interval_s: float, failures: int, cap_s: float = RETRY_CAP_S) -> float:
    """The wait before the next check after `failures` failed loads in a row: the interval,
    doubled per failure up to `cap_s`. A promoted model that cannot load (a folder not copied
    yet, a broken file) was tried again every interval, each time with a full traceback in the
    log; the cap keeps a fixed or newly promoted model at most a minute away."""
    return min(interval_s * 2.0**failures, max(cap_s, interval_s))


class ModelReload:
    """Asks `watch` every `interval_s` (less often while loads fail: retry_delay) and hands what
    it loads to `switch`, in its own thread."""

    def __init__(
        self,
        watch: Watcher,
        switch: Callable[[ModelRuntime], None],
        version: str,
        interval_s: float,
    ) -> None:
        self._watch = watch
        self._switch = switch
        self._version = version  # the newest loaded
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="newsq-reload", daemon=True)

    def start(self) -> ModelReload:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop asking, without waiting: a load in progress (on a GPU up to ~15 s) finishes in
        the background, a daemon thread, and is not switched to."""
        self._stop.set()

    def _loop(self) -> None:
        failures = 0  # in a row
        while not self._stop.wait(retry_delay(self._interval_s, failures)):
            try:
                fresh = self._watch(self._version)
            except Exception as exc:
                failures += 1
                metrics.RELOAD_FAILURES.inc()
                delay = retry_delay(self._interval_s, failures)
                if failures == 1:  # the traceback once a streak, then one line each time
                    log.exception(
                        "loading a promoted model failed; keeping %s, trying again in %.0f s",
                        self._version,
                        delay,
                    )
                else:
                    log.warning(
                        "loading a promoted model failed again (%d in a row: %r); keeping %s,"
                        " trying again in %.0f s",
                        failures,
                        exc,
                        self._version,
                        delay,
                    )
                continue
            failures = 0
            if fresh is not None and not self._stop.is_set():
                self._version = fresh.version
                self._switch(fresh)
