"""The classify task's Request hands the pool the body the consumer decoded (worker/request.py)."""

from __future__ import annotations

import uuid

import pytest
from celery.utils.imports import symbol_by_name
from kombu.exceptions import ContentDisallowed
from kombu.message import Message
from kombu.serialization import dumps

from producer.contract import CLASSIFY_TASK
from worker.app import app
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
