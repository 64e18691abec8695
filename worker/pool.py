"""Celery's thread pool, whose warm shutdown also finishes the messages in hand.

A classify task returns before its rows are committed (worker/completion.py), so when Celery's
pool stops, its threads have finished while messages are still on their way through the
batcher. Stopping also waits for those (up to NEWSQ_TASK_TIMEOUT), so that a SIGTERM acks what
it committed before the connection closes; what the pool had not started stays unacked and goes
back to the queue, as before. The app names it in `worker_pool`, the pool that `newsq worker`
and `celery -A worker.app worker` run without `--pool`.
"""

from __future__ import annotations

import logging

from celery.concurrency import thread

from newsq.settings import get_settings
from worker import services

log = logging.getLogger(__name__)


class TaskPool(thread.TaskPool):  # type: ignore[misc]
    def on_stop(self) -> None:
        super().on_stop()  # the running tasks finish first: they may defer more
        timeout = get_settings().task_timeout
        if not services.completions().drain(timeout):
            log.warning("messages still in hand after %.0fs: they will be redelivered", timeout)
