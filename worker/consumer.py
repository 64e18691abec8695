"""A Celery consumer that records malformed messages as reject rows before refusing them.

Celery already refuses such messages once (ack or reject without requeue) so they never loop; this
adds the row, so that the sender can find out what happened to what they sent.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer

from db.store import RejectRecord
from worker import metrics, services
from worker.events import TimedEventFlush
from worker.intake import WHOLE_MESSAGE, cut_payload

log = logging.getLogger(__name__)


def _record(message: Any, reason: str) -> None:
    headers = message.headers if isinstance(message.headers, dict) else {}
    message_id = headers.get("id") or message.properties.get("correlation_id")
    body = message.body
    text = body.decode("utf-8", "backslashreplace") if isinstance(body, bytes) else str(body)
    try:
        services.store().write_rejects(
            [RejectRecord(reason=reason, payload=cut_payload(text), position=WHOLE_MESSAGE)],
            message_id,
        )
        metrics.REJECTS.inc()
    except Exception:
        log.exception("could not record a reject row for message %s", message_id)


class RejectingConsumer(TimedEventFlush, Consumer):  # type: ignore[misc]
    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        _record(message, f"message body could not be decoded ({message.content_type}): {exc}")
        super().on_decode_error(message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        _record(message, f"invalid message ({message.content_type}): {exc}")
        super().on_invalid_task(body, message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        _record(message, "not a Celery protocol v2 task message (no 'task' header)")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        headers = message.headers if isinstance(message.headers, dict) else {}
        _record(message, f"unknown task name {headers.get('task')!r}")
        super().on_unknown_task(body, message, exc)
