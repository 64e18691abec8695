"""The `newsq.classify` task: validate, hand the articles to the batcher; acked once committed.

The task returns once its articles are submitted, handing its Request a `Deferred` instead of
its result: its thread takes the next message at once, and the message is acked (acks_late)
only after every good article's row is committed, on the completion thread
(worker/completion.py). A failure of the batch path (database away, model error) retries the
message with backoff; after the last retry its articles become reject rows, so nothing
disappears without a trace.
"""

from __future__ import annotations

import logging
import threading
from contextlib import suppress
from functools import partial
from typing import Any, NoReturn

from celery import Task
from celery.app.task import Context
from celery.signals import worker_ready, worker_shutdown
from celery.worker.control import inspect_command

from db.store import RejectRecord
from newsq.settings import get_settings
from producer.contract import CLASSIFY_QUEUE, CLASSIFY_TASK
from worker import completion, heap, metrics, services
from worker.app import app
from worker.batcher import Ticket
from worker.completion import Deferred
from worker.intake import Intake, dump_payload, parse_message

log = logging.getLogger(__name__)

MAX_RETRIES = 12

# A redelivered message (its worker died while holding it) is a suspect: suspects are
# classified one at a time, each in forward passes of its own, and a death is counted against
# a message only then. Every message a dying worker held comes back redelivered; counted at
# arrival, the culprit's deaths were counted against all of them, and innocent messages were
# dead-lettered beside it. A suspect's task waits on its thread for its rows, holding the lock.
_SUSPECTS = threading.Lock()


@app.task(
    name=CLASSIFY_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=MAX_RETRIES,
    Request="worker.request:DecodedRequest",
)
def classify(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
    intake = parse_message(args, kwargs)
    services.in_hand().observe(len(intake.articles) + len(intake.rejects))
    if (self.request.delivery_info or {}).get("redelivered") and intake.articles:
        with _SUSPECTS:
            deliveries = 1 + count_redelivery(self)
            if deliveries > get_settings().max_deliveries:
                return _dead_letter(intake, self.request.id, deliveries)
            ticket = _submit(self, intake, alone=True)
            with suppress(Exception):  # the ticket keeps its error (or timeout): concluded below
                ticket.wait(get_settings().task_timeout)
            return _conclude(self, self.request, intake, ticket)
    ticket = _submit(self, intake, alone=False)
    if ticket.settled:  # nothing to classify: only rejects
        return _conclude(self, self.request, intake, ticket)
    conclude = partial(_conclude, self, self.request, intake, ticket)
    completion.hand_over(self.request.id, Deferred(ticket, conclude))
    return None  # the result follows once the rows are committed


def _submit(task: Task, intake: Intake, *, alone: bool) -> Ticket:
    """Record the message's bad articles, hand the good ones to the batcher."""
    try:
        services.store().write_rejects(intake.rejects, task.request.id)
        metrics.REJECTS.inc(len(intake.rejects))
        if not intake.articles:
            return Ticket(0)
        priority = (task.request.delivery_info or {}).get("priority")
        return services.batcher().submit(
            intake.articles, alone=alone, priority=priority if type(priority) is int else 0
        )
    except Exception as exc:
        _retry(task, intake, exc)


def _conclude(task: Task, context: Context, intake: Intake, ticket: Ticket) -> dict[str, Any]:
    """The task's result once its ticket settled: the poisoned articles' reject rows written,
    or the message retried (Celery's Retry raised) on a failure. Runs on the task's thread or,
    after the task returned, on the completion thread: there with the task's request pushed,
    so that a retry is sent as the task itself would send it."""
    task.push_request(**vars(context))
    try:
        poisoned: list[RejectRecord] = []
        try:
            if ticket.error is not None:
                raise ticket.error
            poisoned = article_rejects(intake, ticket.rejected)
            services.store().write_rejects(poisoned, context.id)
            metrics.REJECTS.inc(len(poisoned))
        except Exception as exc:
            _retry(task, intake, exc)
        return {
            "stored": len(intake.articles) - len(poisoned),
            "rejected": len(intake.rejects) + len(poisoned),
            "model_version": ticket.model_version,
        }
    finally:
        task.pop_request()


def _retry(task: Task, intake: Intake, exc: Exception) -> NoReturn:
    """Send the message again with backoff (raises Retry); after the last retry, record its
    articles as rejects and raise `exc`."""
    message_id = task.request.id
    if task.request.retries >= MAX_RETRIES:
        _give_up(intake, message_id, exc)
        raise exc
    countdown = min(2**task.request.retries, 60)
    log.warning(
        "message %s: %s; retry %d in %ds", message_id, exc, task.request.retries + 1, countdown
    )
    raise task.retry(exc=exc, countdown=countdown) from exc


def article_rejects(intake: Intake, reasons: list[tuple[int, str]]) -> list[RejectRecord]:
    """Reject rows for good-looking articles of `intake` (by index) that could not be stored."""
    return [
        RejectRecord(
            reason=reason,
            payload=dump_payload(intake.articles[i].model_dump(exclude_none=True)),
            position=intake.positions[i],
            article_id=intake.articles[i].key,
        )
        for i, reason in reasons
    ]


def count_redelivery(task: Task) -> int:
    """How often this message (this retry of it) was classified as a suspect, this time
    included: kombu marks a message restored from a dead worker as redelivered; Redis keeps the
    count (a week). The first delivery, classified beside others, is the 1 the caller adds."""
    key = f"newsq:redeliveries:{task.request.id}:{task.request.retries}"
    with task.app.connection_for_write() as connection:
        client = connection.default_channel.client
        count, _ = client.pipeline().incr(key).expire(key, 7 * 24 * 3600).execute()
    return int(count)


def _dead_letter(intake: Intake, message_id: str, deliveries: int) -> dict[str, Any]:
    """A message whose worker keeps dying while classifying it alone: record its articles as
    rejects and ack it, instead of letting it take down every worker that picks it up."""
    reason = (
        f"dead-lettered: its worker died {deliveries - 1} times while classifying it,"
        f" {deliveries - 2} of them with nothing else in its batches (NEWSQ_MAX_DELIVERIES)"
    )
    every = [(i, reason) for i in range(len(intake.articles))]
    rejects = intake.rejects + article_rejects(intake, every)
    services.store().write_rejects(rejects, message_id)
    metrics.REJECTS.inc(len(rejects))
    log.error("message %s: %s", message_id, reason)
    return {"stored": 0, "rejected": len(rejects), "dead_lettered": True}


def _give_up(intake: Intake, message_id: str, exc: BaseException) -> None:
    reason = f"gave up after {MAX_RETRIES} retries: {exc}"
    rejects = article_rejects(intake, [(i, reason) for i in range(len(intake.articles))])
    try:
        services.store().write_rejects(rejects, message_id)
    except Exception:
        log.exception("could not record the rejects of message %s", message_id)


@worker_ready.connect
def _ready(sender: Any, **_: Any) -> None:
    """`sender`: the consumer. A classify worker's prefetch credit follows the messages' sizes
    from now; a worker of training runs alone keeps Celery's one message a thread (a run lasts
    minutes, and must not wait in one worker's hand while another is free)."""
    if CLASSIFY_QUEUE in sender.app.amqp.queues.consume_from:
        services.in_hand().attach(sender)
    heap.freeze()


@worker_shutdown.connect
def _drain(**_: Any) -> None:
    services.shutdown()


@inspect_command()
def newsq_info(state: Any) -> dict[str, object]:
    """`celery inspect newsq_info`: device, model version and metrics port of this worker."""
    return services.describe()
