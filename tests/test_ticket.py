"""A task's Ticket: settles once all its articles are committed or rejected, or one fails."""

from __future__ import annotations

import threading

import pytest

from worker.batcher import Ticket


def test_a_ticket_settles_once_every_article_is_committed_or_rejected() -> None:
    ticket = Ticket(3)
    ticket.settle(2, "v1")
    assert not ticket.settled
    ticket.reject(1, "too odd")
    assert ticket.wait(timeout=1) == "v1"
    assert ticket.wait(timeout=1) == "v1"  # a second wait does not block
    assert ticket.rejected == [(1, "too odd")]


def test_an_empty_ticket_is_settled_at_once() -> None:
    assert Ticket(0).wait(timeout=0.01) is None


def test_a_failure_wakes_the_waiter_and_is_raised_once_per_wait() -> None:
    ticket = Ticket(5)
    woke: list[BaseException] = []

    def waiter() -> None:
        try:
            ticket.wait(timeout=5)
        except RuntimeError as exc:
            woke.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    ticket.fail(RuntimeError("database went away"))
    ticket.fail(RuntimeError("a second error is not kept"))
    ticket.settle(5, "v1")  # late settling changes nothing
    thread.join(5)
    assert [str(e) for e in woke] == ["database went away"]
    with pytest.raises(RuntimeError, match="went away"):
        ticket.wait(timeout=0.01)


def test_callbacks_run_once_when_the_ticket_settles_or_at_once_if_it_has() -> None:
    calls: list[str] = []
    ticket = Ticket(2)
    ticket.then(lambda: calls.append("first"))
    ticket.then(lambda: calls.append("second"))
    ticket.settle(1, "v1")
    assert calls == []
    ticket.settle(1, "v1")
    ticket.fail(RuntimeError("too late to matter"))  # a timeout racing the commit, say
    assert calls == ["first", "second"] and ticket.error is None
    ticket.then(lambda: calls.append("late"))
    assert calls == ["first", "second", "late"]


def test_a_failure_settles_and_calls_back_too() -> None:
    calls: list[BaseException | None] = []
    ticket = Ticket(3)
    ticket.then(lambda: calls.append(ticket.error))
    ticket.fail(RuntimeError("database went away"))
    assert ticket.settled and [str(e) for e in calls] == ["database went away"]


def test_a_wait_past_its_timeout_fails_the_ticket() -> None:
    ticket = Ticket(1)
    with pytest.raises(TimeoutError):
        ticket.wait(0.05)
    assert ticket.settled and isinstance(ticket.error, TimeoutError)
    ticket.settle(1, "v1")  # too late: the message is retried
    with pytest.raises(TimeoutError):
        ticket.wait(0.01)
