"""The public wire contract: task and queue names, the message schema, and broker options.

Other applications depend on exactly this, in any language, so it changes only with
`CONTRACT_VERSION`. Nothing here imports Celery, torch or transformers.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

CONTRACT_VERSION = "1"

CLASSIFY_TASK = "newsq.classify"
CLASSIFY_QUEUE = "newsq.classify"
TRAIN_TASK = "newsq.train"
TRAIN_QUEUE = "newsq.train"

MAX_ARTICLES_PER_MESSAGE = 1024
MAX_ID_CHARS = 256
# Longer text is cut, not refused: the model only reads the first tokens anyway.
MAX_TITLE_CHARS = 1_000
MAX_CONTENT_CHARS = 100_000
MAX_SOURCE_CHARS = 256

SERIALIZER = "json"
# Redis has no native priorities: kombu emulates them with one list per step
# (`newsq.classify`, `newsq.classify:3`, ...), and lower numbers are served first.
PRIORITY_STEPS = (0, 3, 6, 9)
BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
    "priority_steps": list(PRIORITY_STEPS),
    "sep": ":",
    "queue_order_strategy": "priority",
}


def article_id(title: str, content: str | None) -> str:
    """The key of an article sent without `id`: sha256 of title + content, so resends dedupe."""
    return hashlib.sha256((title + (content or "")).encode("utf-8")).hexdigest()


class Article(BaseModel):
    """One article as it travels. Unknown fields and wrong types are refused, long text is cut."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS)
    title: str
    content: str | None = None
    source: str | None = None

    @field_validator("id", "title", "content", "source")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("contains a NUL character, which SQL text columns cannot store")
        return value

    @field_validator("title")
    @classmethod
    def _title_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("title is empty")
        return value[:MAX_TITLE_CHARS]

    @field_validator("content")
    @classmethod
    def _cut_content(cls, value: str | None) -> str | None:
        return value[:MAX_CONTENT_CHARS] if value else None

    @field_validator("source")
    @classmethod
    def _cut_source(cls, value: str | None) -> str | None:
        return value[:MAX_SOURCE_CHARS] if value else None

    @property
    def key(self) -> str:
        """The caller's id, or the content hash when the caller gave none."""
        return self.id if self.id is not None else article_id(self.title, self.content)

    def with_key(self) -> Article:
        """The same article with its id filled in, as the client sends it."""
        return self if self.id is not None else self.model_copy(update={"id": self.key})


class ClassifyKwargs(BaseModel):
    """The kwargs of a `newsq.classify` message. Articles are checked one by one elsewhere,
    so that one bad article does not cost the good ones of the same message."""

    model_config = ConfigDict(extra="forbid", strict=True)

    articles: list[Any] = Field(min_length=1, max_length=MAX_ARTICLES_PER_MESSAGE)
