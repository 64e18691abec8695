"""Messages in hand sized by the articles they carry, not by threads.

A worker holds (reserved, unacked) as many messages as Celery's prefetch credit allows, and a
classify task no longer holds a thread while its rows are on their way (worker/completion.py),
so the credit alone bounds what a worker has in hand. A message carries 1 to 1,024 articles:
a credit fixed in messages is either too few one-article messages to fill a batch (128 task
threads: batches of 21 rows with the small model, 0.47 of the bare model) or too many
256-article ones (articles that wait in a worker's hand, out of other workers' reach, and
near the visibility timeout when a model is slow). The credit follows a running mean of the
articles per message instead: NEWSQ_ARTICLES_IN_HAND / mean, at least the task threads and at
most MAX_MESSAGES. `credit` is the pure rule; `InHand` moves the consumer's QoS (kombu's,
thread safe; Celery's event loop applies a change at its next turn) by what the rule adds to
Celery's own credit.
"""

from __future__ import annotations

import threading
from typing import Any

# Until messages are seen: the client's default chunk (a worker starts with the smaller credit).
START_ARTICLES_PER_MESSAGE = 256
# A worker's credit at most, in messages: with one-article messages, ~4 s of work for the small
# model on 2 CPU cores; several batches of bert-base in flight on a GPU.
MAX_MESSAGES = 4096
# Weight of each message in the running mean: a change of message size is followed within
# some tens of messages, and one odd message moves the credit little.
SMOOTHING = 0.1
# The credit changes only when the rule's differs from it by more than this fraction.
MIN_CHANGE = 0.25


def credit(mean_articles: float, target_articles: int, floor: int, ceiling: int) -> int:
    """Messages to hold so that about `target_articles` articles are in hand."""
    return max(floor, min(ceiling, round(target_articles / max(1.0, mean_articles))))


class InHand:
    """The credit of one worker's consumer, following the sizes of the messages it classifies."""

    def __init__(self, target_articles: int, floor: int, ceiling: int = MAX_MESSAGES) -> None:
        self._target, self._floor, self._ceiling = target_articles, floor, max(floor, ceiling)
        self._mean = float(START_ARTICLES_PER_MESSAGE)
        self._lock = threading.Lock()
        self._consumer: Any = None
        self._qos: Any = None  # the consumer's QoS that `_added` was added to
        self._added = 0  # messages added to Celery's own credit

    def attach(self, consumer: Any) -> None:
        """Start moving `consumer`'s credit (Celery's worker_ready gives the consumer)."""
        with self._lock:
            self._consumer = consumer
            self._apply()

    def observe(self, articles: int) -> None:
        """A message of `articles` articles arrived."""
        with self._lock:
            self._mean += SMOOTHING * (max(1, articles) - self._mean)
            self._apply()

    def messages(self) -> int:
        """The credit now: at most this many messages are in hand."""
        if self._qos is None:
            return self._floor
        return max(self._floor, int(self._qos.value))

    def _apply(self) -> None:
        qos = None if self._consumer is None else self._consumer.qos
        if qos is None:
            return
        if qos is not self._qos:  # a new connection: Celery's initial credit again
            self._qos, self._added = qos, 0
        base = int(self._consumer.initial_prefetch_count)
        want = credit(self._mean, self._target, max(self._floor, base), self._ceiling)
        have = base + self._added
        if abs(want - have) <= MIN_CHANGE * have:
            return
        if want > have:
            qos.increment_eventually(want - have)
        else:
            qos.decrement_eventually(have - want)
        self._added = want - base
