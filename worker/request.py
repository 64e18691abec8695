"""The classify task's Celery Request: decoded once, finished when its rows are committed.

Decoded once: Celery's task strategy decodes a message's body in the consumer thread, to tell
protocol 1 from 2 (`'args' in message.payload`), keeps the result on the message, and still
hands the raw body to the pool thread, which decodes it again. For 256-article messages the two
decodes were ~18% of a worker's interpreter time (py-spy --gil, null model, PostgreSQL). This
Request hands the pool the payload the consumer decoded, as Celery does itself for the protocol
1 messages it converts (`decoded=True`). Nothing is lost: that first decode already enforced
`accept_content`, so a pickled message is still refused before it is read.

Finished late: a classify task hands over a `Deferred` once its articles are submitted
(worker/completion.py). The pool calls the request's `on_success` after the task, which acks
the message and sends the task-succeeded event; with a Deferred handed over that waits until
the ticket settles, and then runs with the task's concluded result (or its Retry or error, as
Celery's trace would have passed it), on the completion thread. Celery builds a class per task type
over this one (`create_request_cls`) whose own `on_success` would come first, so the request
sets its handler as an instance attribute, which comes before both.
"""

from __future__ import annotations

import time
from typing import Any

from billiard.einfo import ExceptionInfo
from celery.worker.request import Request

from worker import completion, services


class DecodedRequest(Request):  # type: ignore[misc]
    on_success: Any  # set per instance, below

    def __init__(self, message: Any, *, body: Any = None, decoded: bool = False, **kw: Any):
        if not decoded:
            body, decoded = message.payload, True  # cached on the message by its first decode
        super().__init__(message, body=body, decoded=decoded, **kw)
        self._finish: Any = self.on_success  # Celery's: task_ready, ack, task-succeeded
        self.on_success = self._on_return

    def _on_return(self, failed__retval__runtime: tuple[bool, Any, float], **kwargs: Any) -> None:
        failed, _, runtime = failed__retval__runtime
        deferred = None if failed else completion.take(self.id)
        if deferred is None:
            self._finish(failed__retval__runtime, **kwargs)
            return
        started = time.monotonic() - runtime

        def finish() -> None:
            try:
                # Celery's trace passes on saferepr(result); a dict of three counts and a
                # version needs no guard, and saferepr cost 6% of a worker's interpreter time
                # with one-article messages.
                result = repr(deferred.conclude())
                outcome = (False, result, time.monotonic() - started)
            except Exception:
                outcome = (True, ExceptionInfo(), time.monotonic() - started)
            self._finish(outcome)

        services.completions().defer(deferred.ticket, finish)
