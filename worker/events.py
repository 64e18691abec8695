"""Task events (what Flower shows) sent in batches on a timer instead of every loop turn.

Celery buffers a worker's task events (received, started, succeeded: three a message) and, for
each one, asks the event loop to flush the buffer soon; from a task thread that request wakes
the loop, so a flush followed nearly every event: a publish (JSON and a Redis round trip on the
loop thread) per ~10 events, and a buffer of 24 that a task thread flushes itself, under the
dispatcher's lock the other task threads then wait on. With one-article messages that was
~200-300 µs of worker CPU a message, the largest cost of the message after Celery's own path:
null model, PostgreSQL, one process, events on 1,012-1,478 messages/s against 1,779-1,901 off;
with the timer 1,706-1,762 (worker CPU 642-740 -> 477-489 µs a message; events off 429-466).

Here the loop flushes every `FLUSH_INTERVAL` seconds, one `task.multi` message per flush (the
batch Celery's receivers, Flower's among them, already read), and a task thread flushes only if
a flush is overdue by far (`BUFFER_LIMIT` events waiting). Flower sees a task's state change at
most `FLUSH_INTERVAL` later.
"""

from __future__ import annotations

from typing import Any

from celery.app.events import Events as CeleryEvents
from celery.events.dispatcher import EventDispatcher

FLUSH_INTERVAL = 0.1
# ~1 s of events at 3,000 messages/s: reached only when the loop is stalled.
BUFFER_LIMIT = 10_000


class BatchingDispatcher(EventDispatcher):  # type: ignore[misc]
    """Celery's dispatcher with a buffer the timer, not the 24th event, empties."""

    def __init__(self, *args: Any, buffer_limit: int = BUFFER_LIMIT, **kwargs: Any) -> None:
        super().__init__(*args, buffer_limit=buffer_limit, **kwargs)


class Events(CeleryEvents):  # type: ignore[misc]
    """`Celery(events=...)`: the app's events, with the batching dispatcher."""

    dispatcher_cls = "worker.events:BatchingDispatcher"


class TimedEventFlush:
    """Consumer mixin: flush the task events on a timer of the event loop, not on demand."""

    _flush_timer: Any = None

    def register_with_event_loop(self, hub: Any) -> None:
        super().register_with_event_loop(hub)  # type: ignore[misc]
        # Called again after a reconnection: one timer, not one per connection.
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        self._flush_timer = hub.call_repeatedly(FLUSH_INTERVAL, self._flush_events)  # type: ignore[attr-defined]

    def on_send_event_buffered(self) -> None:
        """Celery's version wakes the loop to flush at once; the timer flushes instead."""

    def shutdown(self) -> None:
        self._flush_events()  # type: ignore[attr-defined]  # what the timer has not sent yet
        super().shutdown()  # type: ignore[misc]
