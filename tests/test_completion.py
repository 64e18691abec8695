"""Deferred classify messages: finished on one thread once their tickets settle
(worker/completion.py)."""

from __future__ import annotations

import threading
import time

from worker.batcher import Ticket
from worker.completion import Completions, Deferred, hand_over, take


def test_a_deferred_task_is_finished_on_the_completion_thread_once_its_ticket_settles() -> None:
    completions = Completions(timeout_s=60)
    finished: list[tuple[str, str | None]] = []
    ticket = Ticket(2)
    completions.defer(ticket, lambda: finished.append((threading.current_thread().name, "x")))
    assert not completions.drain(0.1)  # in hand, not finished
    ticket.settle(2, "v1")
    assert completions.drain(5)
    assert finished == [("newsq-complete", "x")]


def test_tickets_past_their_deadline_fail_with_a_timeout_and_are_finished() -> None:
    completions = Completions(timeout_s=0.2)
    errors: list[BaseException | None] = []
    late, on_time = Ticket(1), Ticket(1)
    completions.defer(late, lambda: errors.append(late.error))
    completions.defer(on_time, lambda: errors.append(on_time.error))
    on_time.settle(1, "v1")
    started = time.monotonic()
    assert completions.drain(5)
    assert time.monotonic() - started < 3  # the sweep runs at least every second
    assert errors[0] is None and isinstance(errors[1], TimeoutError)


def test_a_finish_that_raises_costs_only_itself() -> None:
    completions = Completions(timeout_s=60)
    done: list[int] = []
    first, second = Ticket(0), Ticket(0)  # settled at once

    def boom() -> None:
        raise RuntimeError("ack failed")

    completions.defer(first, boom)
    completions.defer(second, lambda: done.append(1))
    assert completions.drain(5) and done == [1]


def test_a_request_takes_only_what_its_own_task_handed_over() -> None:
    deferred = Deferred(Ticket(0), lambda: None)
    hand_over("task-1", deferred)
    assert take("task-2") is None  # another task's: left by one that died before its callback
    assert take("task-1") is None  # taken once, by whoever asked first
    hand_over("task-1", deferred)
    assert take("task-1") is deferred
