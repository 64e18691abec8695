"""The `newsq.classify` task: validate, hand the articles to the batcher, wait for the commit.

The task returns (and its message is acked) only after every good article's row is committed.
A failure of the batch path (database away, model error) retries the message with backoff; after
the last retry its articles become reject rows, so nothing disappears without a trace.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import worker_shutdown
from celery.worker.control import inspect_command

from db.store import RejectRecord
from newsq.settings import get_settings
from producer.contract import CLASSIFY_TASK
from worker import metrics, services
from worker.app import app
from worker.intake import Intake, dump_payload, parse_message

log = logging.getLogger(__name__)

MAX_RETRIES = 12


@app.task(
    name=CLASSIFY_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=MAX_RETRIES,
)
def classify(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    intake = parse_message(args, kwargs)
    message_id = self.request.id
    try:
        services.store().write_rejects(intake.rejects, message_id)
        metrics.REJECTS.inc(len(intake.rejects))
        version = None
        if intake.articles:
            ticket = services.batcher().submit(intake.articles)
            version = ticket.wait(get_settings().task_timeout)
    except Exception as exc:
        if self.request.retries >= MAX_RETRIES:
            _give_up(intake, message_id, exc)
            raise
        countdown = min(2**self.request.retries, 60)
        log.warning(
            "message %s: %s; retry %d in %ds", message_id, exc, self.request.retries + 1, countdown
        )
        raise self.retry(exc=exc, countdown=countdown) from exc
    return {
        "stored": len(intake.articles),
        "rejected": len(intake.rejects),
        "model_version": version,
    }


def _give_up(intake: Intake, message_id: str, exc: BaseException) -> None:
    rejects = [
        RejectRecord(
            reason=f"gave up after {MAX_RETRIES} retries: {exc}",
            payload=dump_payload(a.model_dump(exclude_none=True)),
            position=position,
            article_id=a.key,
        )
        for a, position in zip(intake.articles, intake.positions, strict=True)
    ]
    try:
        services.store().write_rejects(rejects, message_id)
    except Exception:
        log.exception("could not record the rejects of message %s", message_id)


@worker_shutdown.connect
def _drain(**_: Any) -> None:
    services.shutdown()


@inspect_command()
def newsq_info(state: Any) -> dict[str, object]:
    """`celery inspect newsq_info`: device, model version and metrics port of this worker."""
    return services.describe()
