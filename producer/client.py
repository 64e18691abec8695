"""`NewsClient`: what other Python apps import to enqueue articles.

It speaks the contract through a Celery app that knows no task code (`send_task` by name), so the
messages are exactly what any Celery client in any language would send.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

from celery import Celery
from pydantic import ValidationError

from producer.contract import (
    BROKER_TRANSPORT_OPTIONS,
    CLASSIFY_QUEUE,
    CLASSIFY_TASK,
    MAX_ARTICLES_PER_MESSAGE,
    PRIORITY_STEPS,
    SERIALIZER,
    Article,
)

ArticleLike = Article | Mapping[str, Any] | Sequence[str | None]


def celery_client(broker_url: str) -> Celery:
    """A send-only Celery app configured for the contract (JSON, priority lists)."""
    app = Celery("newsq-client", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer=SERIALIZER,
        accept_content=[SERIALIZER],
        broker_transport_options=BROKER_TRANSPORT_OPTIONS,
        broker_connection_retry_on_startup=True,
        task_default_queue=CLASSIFY_QUEUE,
    )
    return app


def to_article(item: ArticleLike) -> Article:
    """Accept an Article, a dict, or an (id, title[, content[, source]]) tuple."""
    if isinstance(item, Article):
        return item
    if isinstance(item, Mapping):
        return Article.model_validate(dict(item))
    if isinstance(item, str) or not 2 <= len(item) <= 4:
        raise ValueError("expected a dict or an (id, title[, content[, source]]) tuple")
    fields = dict(zip(("id", "title", "content", "source"), item, strict=False))
    return Article.model_validate(fields)


def chunked(items: Iterable[Article], size: int) -> Iterator[list[Article]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


class NewsClient:
    """Enqueue articles for classification.

    >>> client = NewsClient("redis://localhost:6379/0")
    >>> ids = client.enqueue([{"title": "央行宣布降准"}, ("a-42", "湖人队赢球", None)])
    """

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self.app = celery_client(broker_url)

    def enqueue(
        self,
        articles: Iterable[ArticleLike],
        *,
        chunk_size: int = 256,
        priority: int | None = None,
    ) -> list[str]:
        """Validate every article, then send them in messages of `chunk_size`; return the ids.

        Raises ValueError naming the first bad article before anything is sent.
        """
        if not 1 <= chunk_size <= MAX_ARTICLES_PER_MESSAGE:
            raise ValueError(f"chunk_size must be 1..{MAX_ARTICLES_PER_MESSAGE}")
        if priority is not None and not PRIORITY_STEPS[0] <= priority <= PRIORITY_STEPS[-1]:
            raise ValueError(f"priority must be {PRIORITY_STEPS[0]}..{PRIORITY_STEPS[-1]}")
        ready: list[Article] = []
        for index, item in enumerate(articles):
            try:
                ready.append(to_article(item).with_key())
            except (ValidationError, ValueError, TypeError) as exc:
                raise ValueError(f"article {index}: {exc}") from exc
        for chunk in chunked(ready, chunk_size):
            self.send_chunk(chunk, priority=priority)
        return [article.key for article in ready]

    def send_chunk(self, articles: Sequence[Article], *, priority: int | None = None) -> str:
        """Send one `newsq.classify` message as-is; returns the Celery task id."""
        payload = [article.model_dump(exclude_none=True) for article in articles]
        result = self.app.send_task(
            CLASSIFY_TASK,
            kwargs={"articles": payload},
            queue=CLASSIFY_QUEUE,
            priority=priority,
            ignore_result=True,
        )
        return str(result.id)

    def close(self) -> None:
        self.app.close()

    def __enter__(self) -> NewsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
