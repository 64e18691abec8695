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


class ModelReload:
    """Asks `watch` every `interval_s` and hands what it loads to `switch`, in its own thread."""

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
        while not self._stop.wait(self._interval_s):
            try:
                fresh = self._watch(self._version)
            except Exception:
                metrics.RELOAD_FAILURES.inc()
                log.exception("loading a promoted model failed; keeping %s", self._version)
                continue
            if fresh is not None and not self._stop.is_set():
                self._version = fresh.version
                self._switch(fresh)
