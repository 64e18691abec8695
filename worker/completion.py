"""Classify messages in hand without a thread each: a message is finished when its rows are.

A classify task used to wait on its Celery pool thread until its rows were committed, so a
worker held as many messages as it had task threads: with one-article messages, 128 on a CPU,
spread over the few batches in the pipeline at once (21 rows each with the small model, against
~190 with 256-article messages: 0.47 of the bare model), and every message cost two thread
wake-ups (the pool's, then its ticket's) among 128 threads taking turns at the GIL.

Now the task submits its articles and hands a `Deferred` to its Request (`hand_over`, on the
pool thread, which calls the Request back next): its thread takes the next message at once,
and the message stays in hand, unacked, until its ticket settles. Then this module's
thread concludes it (the poisoned articles' reject rows, a retry on failure) and finishes
Celery's request: the ack and the task-succeeded event (worker/request.py). Messages in hand
are bounded by the prefetch credit (worker/prefetch.py), not by threads. A ticket that does not
settle within NEWSQ_TASK_TIMEOUT fails with a TimeoutError and its message is retried, as a
task that waited on it did.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.batcher import Ticket

log = logging.getLogger(__name__)

# How often the thread looks for tickets past their deadline when nothing settles.
SWEEP_INTERVAL_S = 1.0
# A pool thread runs a task, then calls its Request back with the task's return value as a
# string (Celery's trace keeps only its repr): the Deferred goes from one to the other here.
_handed = threading.local()


@dataclass(frozen=True, slots=True)
class Deferred:
    """What a task returns while its work goes on: the ticket that work settles, and how to
    conclude once it has (the task's result, or raise what the task would have raised)."""

    ticket: Ticket
    conclude: Callable[[], Any]


def hand_over(task_id: str, deferred: Deferred) -> None:
    """The task's side: its Request, called back next on this thread, takes `deferred`."""
    _handed.value = (task_id, deferred)


def take(task_id: str) -> Deferred | None:
    """The Request's side: what its task handed over, if it did (by id: a task that died
    before its callback left nothing for the next one)."""
    handed, _handed.value = getattr(_handed, "value", None), None
    return handed[1] if handed is not None and handed[0] == task_id else None


class Completions:
    """One thread that runs the finish of each deferred task once its ticket settles: under load
    it takes settled tasks one after another without sleeping, where a waiting task thread
    woke up for each."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._settled: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._deadlines: deque[tuple[float, Ticket]] = deque()  # in the order deferred
        self._open = 0  # deferred and not finished yet
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="newsq-complete", daemon=True)
        self._thread.start()

    def defer(self, ticket: Ticket, finish: Callable[[], None]) -> None:
        """Call `finish` on this module's thread once `ticket` settles (or times out)."""
        with self._idle:
            self._open += 1
        self._deadlines.append((time.monotonic() + self._timeout_s, ticket))
        ticket.then(lambda: self._settled.put(finish))

    def drain(self, timeout_s: float) -> bool:
        """Wait until every deferred task is finished (a warm shutdown: their acks go out
        before the connection closes); False if some were not within `timeout_s`."""
        with self._idle:
            return self._idle.wait_for(lambda: self._open == 0, timeout_s)

    def _run(self) -> None:
        while True:
            try:
                finish = self._settled.get(timeout=SWEEP_INTERVAL_S)
            except queue.Empty:
                finish = None
            if finish is not None:
                try:
                    finish()
                except Exception:  # a finish that fails costs its message, never the thread
                    log.exception("finishing a classify message failed")
                with self._idle:
                    self._open -= 1
                    if self._open == 0:
                        self._idle.notify_all()
            self._expire(time.monotonic())

    def _expire(self, now: float) -> None:
        """Fail the tickets past their deadline. Deadlines grow in the order tasks were
        deferred, so the sweep stops at the first ticket still within its own."""
        while self._deadlines:
            deadline, ticket = self._deadlines[0]
            if not ticket.settled and deadline > now:
                return
            self._deadlines.popleft()
            if not ticket.settled:
                ticket.fail(TimeoutError(f"rows not committed within {self._timeout_s:.0f}s"))
