"""The classify task's Celery Request: each message body is decoded once, not twice.

Celery's task strategy decodes a message's body in the consumer thread, to tell protocol 1
from 2 (`'args' in message.payload`), keeps the result on the message, and still hands the raw
body to the pool thread, which decodes it again. For 256-article messages the two decodes were
~18% of a worker's interpreter time (py-spy --gil, null model, PostgreSQL). This Request hands
the pool the payload the consumer decoded, as Celery does itself for the protocol 1 messages
it converts (`decoded=True`). Nothing is lost: that first decode already enforced
`accept_content`, so a pickled message is still refused before it is read.
"""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request


class DecodedRequest(Request):  # type: ignore[misc]
    def __init__(self, message: Any, *, body: Any = None, decoded: bool = False, **kw: Any):
        if not decoded:
            body, decoded = message.payload, True  # cached on the message by its first decode
        super().__init__(message, body=body, decoded=decoded, **kw)
