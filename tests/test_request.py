"""The classify task's Request hands the pool the body the consumer decoded, and acks once the
rows its task handed over are committed (worker/request.py)."""

from __future__ import annotations

import threading
import uuid

import pytest
from celery.utils.imports import symbol_by_name
from kombu.exceptions import ContentDisallowed
from kombu.message import Message
from kombu.serialization import dumps

from producer.contract import CLASSIFY_TASK
from tests.helpers import wait_until
from worker.app import app
from worker.batcher import Ticket
from worker.completion import Deferred, hand_over
from worker.request import DecodedRequest
from worker.tasks import classify

ARTICLES = {"articles": [{"id": "r-1", "title": "央行降准"}]}


def delivered(serializer: str) -> Message:
    """A classify message as the consumer receives it: built and encoded by Celery itself."""
    sent = app.amqp.as_task_v2(str(uuid.uuid4()), CLASSIFY_TASK, kwargs=ARTICLES)
    content_type, encoding, body = dumps(sent.body, serializer)
    return Message(
        body=body,
        content_type=content_type,
        content_encoding=encoding,
        headers=sent.headers,
        accept=["application/json"],
    )


def test_the_pool_gets_the_payload_the_consumer_decoded() -> None:
    assert symbol_by_name(classify.Request) is DecodedRequest
    message = delivered("json")
    assert "args" not in message.payload  # Celery's strategy decodes the body here first
    request = DecodedRequest(
        message, app=app, task=classify, body=message.body, headers=message.headers
    )
    # No content type: Celery's trace takes the body as (args, kwargs, embed) as it is.
    assert request.content_type is None
    assert request.body is message.payload
    args, kwargs, _ = request.body
    assert args == [] and kwargs == ARTICLES


def test_content_outside_accept_content_is_still_refused() -> None:
    message = delivered("pickle")
    with pytest.raises(ContentDisallowed):
        DecodedRequest(message, app=app, task=classify, body=message.body, headers=message.headers)


def acking_request(acks: list[str]) -> DecodedRequest:
    """A request whose acks name the thread they came from."""
    message = delivered("json")
    return DecodedRequest(
        message,
        app=app,
        task=classify,
        body=message.body,
        headers=message.headers,
        on_ack=lambda *_: acks.append(threading.current_thread().name),
    )


def test_the_message_is_acked_once_the_rows_its_task_handed_over_are_committed() -> None:
    acks: list[str] = []
    request = acking_request(acks)
    ticket = Ticket(1)
    hand_over(request.id, Deferred(ticket, lambda: {"stored": 1}))
    request.on_success((0, "None", 0.001))  # the pool's callback after the task returned
    assert acks == [] and not request.acknowledged
    ticket.settle(1, "v1")
    wait_until(lambda: acks == ["newsq-complete"], timeout=5)


def test_a_task_that_handed_nothing_over_is_acked_as_it_returns() -> None:
    acks: list[str] = []
    request = acking_request(acks)
    request.on_success((0, "{'stored': 0, 'rejected': 1}", 0.001))
    assert acks == [threading.current_thread().name]
