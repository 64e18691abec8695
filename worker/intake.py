"""Split an incoming classify message into good articles and reject records.

Pure: the task calls it, tests call it directly. A bad article costs only itself; a message that
does not match the schema at all becomes one reject (position -1) and is acked, never retried.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from db.store import RejectRecord, storable
from producer.contract import ARTICLE_LIST, MAX_ID_CHARS, Article, ClassifyKwargs, describe

WHOLE_MESSAGE = -1
MAX_PAYLOAD_CHARS = 200_000


@dataclass(slots=True)
class Intake:
    articles: list[Article] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # of each good article in its message
    rejects: list[RejectRecord] = field(default_factory=list)


def dump_payload(value: Any) -> str:
    """The payload as received, as JSON text (cut when huge), for the rejects table."""
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return cut_payload(text)


def cut_payload(text: str) -> str:
    """Cap the size of a received payload and make it storable."""
    text = storable(text)
    if len(text) > MAX_PAYLOAD_CHARS:
        return text[:MAX_PAYLOAD_CHARS] + f"... [{len(text) - MAX_PAYLOAD_CHARS} chars cut]"
    return text


def parse_message(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Intake:
    intake = Intake()
    if args:
        intake.rejects.append(
            RejectRecord(
                reason="positional arguments are not part of the contract: send kwargs "
                '{"articles": [...]}',
                payload=dump_payload({"args": list(args), "kwargs": kwargs}),
                position=WHOLE_MESSAGE,
            )
        )
        return intake
    try:
        message = ClassifyKwargs.model_validate(kwargs)
    except ValidationError as exc:
        intake.rejects.append(
            RejectRecord(
                reason=f"message does not match the newsq.classify schema: {describe(exc)}",
                payload=dump_payload(kwargs),
                position=WHOLE_MESSAGE,
            )
        )
        return intake
    try:
        # The common case, a message without a bad article, in one call into pydantic-core.
        intake.articles = ARTICLE_LIST.validate_python(message.articles)
        intake.positions = list(range(len(intake.articles)))
        return intake
    except ValidationError:
        pass  # find the bad ones, one article at a time
    for position, raw in enumerate(message.articles):
        try:
            if not isinstance(raw, dict):
                raise TypeError(f"article must be a JSON object, got {type(raw).__name__}")
            intake.articles.append(Article.model_validate(raw))
            intake.positions.append(position)
        except (ValidationError, TypeError) as exc:
            reason = describe(exc) if isinstance(exc, ValidationError) else str(exc)
            given_id = raw.get("id") if isinstance(raw, dict) else None
            intake.rejects.append(
                RejectRecord(
                    reason=reason,
                    payload=dump_payload(raw),
                    position=position,
                    article_id=given_id[:MAX_ID_CHARS] if isinstance(given_id, str) else None,
                )
            )
    return intake
