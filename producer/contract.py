"""The public wire contract: task and queue names, the message schema, and broker options.

Other applications depend on exactly this, in any language, so it changes only with
`CONTRACT_VERSION`. Nothing here imports Celery, torch or transformers.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


# NUL and lone surrogates (e.g. undecodable bytes kept by errors="surrogateescape") cannot be
# stored in PostgreSQL text or encoded as UTF-8.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Text cut to these lengths; an id is never cut (it is a key): a longer one is refused.
_LIMITS = {
    "id": None,
    "title": MAX_TITLE_CHARS,
    "content": MAX_CONTENT_CHARS,
    "source": MAX_SOURCE_CHARS,
}


class Article(BaseModel):
    """One article as it travels. Unknown fields and wrong types are refused, long text is cut."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS)
    title: str
    content: str | None = None
    source: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _clean(cls, data: Any) -> Any:
        """One pass over the raw fields (cheaper than a validator per field, which matters at
        bulk-ingest rates): refuse NULs, lone surrogates and blank titles, cut long text, and
        treat "" as absent."""
        if not isinstance(data, dict):
            return data
        cleaned = dict(data)
        for name, value in data.items():
            if not isinstance(value, str) or name not in _LIMITS:
                continue
            if bad := _UNSTORABLE.search(value):
                what = "a NUL" if bad.group() == "\x00" else "a lone surrogate (invalid text)"
                raise ValueError(f"{name} contains {what}, which SQL text cannot store")
            limit = _LIMITS[name]
            if name == "title" and (not value or value.isspace()):
                raise ValueError("title is empty")
            if limit is None:
                continue
            if not value:
                cleaned[name] = None
            elif len(value) > limit:
                cleaned[name] = value[:limit]
        return cleaned

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


def describe(error: ValidationError) -> str:
    """One readable line per problem: `title: Input should be a valid string; ...`."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def priority_lists(queue: str) -> list[str]:
    """The Redis lists that hold `queue`, one per priority step (`queue`, `queue:3`, ...)."""
    sep = BROKER_TRANSPORT_OPTIONS["sep"]
    return [f"{queue}{sep}{step}" if step else queue for step in PRIORITY_STEPS]
