"""`NewsClient`: what other Python apps import to enqueue articles.

It speaks the contract through a Celery app that knows no task code (`send_task` by name), so the
messages are exactly what any Celery client in any language would send.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any, TypeVar

from celery import Celery
from kombu.exceptions import BatchPublishError
from kombu.utils.url import maybe_sanitize_url
from pydantic import ValidationError

from producer import serializer, transport
from producer.contract import (
    ARTICLE_LIST,
    BROKER_TRANSPORT_OPTIONS,
    CLASSIFY_QUEUE,
    CLASSIFY_TASK,
    MAX_ARTICLES_PER_MESSAGE,
    PRIORITY_STEPS,
    SERIALIZER,
    TRAIN_QUEUE,
    TRAIN_TASK,
    Article,
    TrainRequest,
    describe,
    priority_lists,
)
from producer.transport import TRANSPORT

ArticleLike = Article | Mapping[str, Any] | Sequence[str | None]
# Messages that enqueue() sends per Redis round trip (kombu's Producer.batch pipeline):
# one-article messages cost a round trip each otherwise, 40% of the sender's time.
PIPELINE_MESSAGES = 256
T = TypeVar("T")
# Classify messages are encoded by orjson, as UTF-8 (producer/serializer.py).
BODY_SERIALIZER = serializer.install()
log = logging.getLogger(__name__)
PUBLISH_RETRY_POLICY = {
    "max_retries": 40,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 2,
}


def redact(url: str) -> str:
    """`url` with its password masked: URLs end up in logs, tickets and chat rooms."""
    return str(maybe_sanitize_url(url, mask="***"))


def celery_client(broker_url: str) -> Celery:
    """A send-only Celery app configured for the contract (JSON, priority lists)."""
    app = Celery(
        "newsq-client", broker=transport.broker_url(broker_url, TRANSPORT), set_as_current=False
    )
    app.conf.update(
        task_serializer=SERIALIZER,
        accept_content=[SERIALIZER],
        # kombu's Redis transport with one redis-py client per channel (producer/transport.py)
        broker_transport=TRANSPORT,
        broker_transport_options=BROKER_TRANSPORT_OPTIONS,
        broker_connection_retry_on_startup=True,
        task_default_queue=CLASSIFY_QUEUE,
        # A Redis restart or failover takes seconds: keep retrying a send for about a minute
        # (Celery's default gives up after 0.6 s) before the error reaches the caller.
        task_publish_retry=True,
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
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


def validated(items: list[ArticleLike]) -> list[Article]:
    """Articles from `items`, or ValueError naming the first bad one. A list of plain dicts,
    the common case, is checked in one call into pydantic-core: one call per article took more
    than twice as long (best of 5 over 100,000 THUCNews titles: 6.1 against 2.7 µs each)."""
    if all(type(item) is dict for item in items):
        try:
            return ARTICLE_LIST.validate_python(items)
        except ValidationError:
            pass  # find the first bad one, below
    ready = []
    for index, item in enumerate(items):
        try:
            ready.append(to_article(item))
        except (ValidationError, ValueError, TypeError) as exc:
            reason = describe(exc) if isinstance(exc, ValidationError) else str(exc)
            raise ValueError(f"article {index}: {reason}") from exc
    return ready


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


class NewsClient:
    """Enqueue articles for classification. One broker connection per client: use one client
    per thread.

    >>> client = NewsClient("redis://localhost:6379/0")
    >>> ids = client.enqueue([{"title": "央行宣布降准"}, ("a-42", "湖人队赢球", None)])
    """

    def __init__(
        self, broker_url: str, *, database_url: str | None = None, max_queue: int | None = None
    ) -> None:
        """`max_queue`: block sending while more messages than this wait in the classify queue
        (backpressure); `database_url`: where `results` and `wait` read predictions."""
        self.broker_url = broker_url
        self.database_url = database_url
        self.max_queue = max_queue
        self.app = celery_client(broker_url)
        self._engine: Any = None
        self._connection: Any = None
        self._producer: Any = None
        self._pipeline: Any = None  # kombu's batch of enqueue(), while it sends
        self._room = 0

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
        ready = [article.with_key() for article in validated(list(articles))]
        for group in chunked(chunked(ready, chunk_size), PIPELINE_MESSAGES):
            self._send_pipelined(group, priority)
        return [article.key for article in ready]

    def _send_pipelined(self, chunks: list[list[Article]], priority: int | None) -> None:
        """Send messages in one Redis pipeline. A pipeline that fails may have delivered any
        part of itself, so all of it is sent again, one message at a time with the publish
        retries: at least once, and a duplicate message only upserts the same rows again."""
        try:
            with self._producer_for_send().batch(max_size=len(chunks)) as self._pipeline:
                for chunk in chunks:
                    self.send_chunk(chunk, priority=priority)
            return
        except BatchPublishError as exc:
            log.warning(
                "a pipeline of %d messages failed (%s): sending each again", len(chunks), exc
            )
        finally:
            self._pipeline = None
        for chunk in chunks:
            self.send_chunk(chunk, priority=priority)

    def send_chunk(self, articles: Sequence[Article], *, priority: int | None = None) -> str:
        """Send one `newsq.classify` message as-is; returns the Celery task id."""
        if self.max_queue is not None:
            self.wait_for_room(self.max_queue)
        payload = ARTICLE_LIST.dump_python(list(articles), exclude_none=True)
        result = self.app.send_task(
            CLASSIFY_TASK,
            kwargs={"articles": payload},
            queue=CLASSIFY_QUEUE,
            priority=priority,
            ignore_result=True,
            producer=self._producer_for_send(),
            serializer=BODY_SERIALIZER,
            # Celery declares the queue again for every message: a copy and a bind of the queue
            # entity each time, a quarter of a one-article send, to set up a binding that the
            # default exchange never reads (a Redis list of the queue's name is the route).
            declare=[],
            # Celery would repr the whole payload into a header; a summary is enough for Flower.
            argsrepr="()",
            kwargsrepr=f"{{'articles': <{len(payload)} articles>}}",
        )
        return str(result.id)

    def _producer_for_send(self) -> Any:
        if self._producer is None:
            self._producer = self.app.amqp.Producer(self.connection(), auto_declare=False)
        return self._producer

    def train(self, **params: Any) -> int:
        """Queue a `newsq.train` run (parameters of `TrainRequest`); returns its run id.

        The run row is created here, so the id exists before a trainer picks the message up.
        """
        from db import registry

        request = TrainRequest.model_validate(params)
        run_id = registry.create_run(self._db(), request.model_dump())
        kwargs = request.model_copy(update={"run_id": run_id}).model_dump()
        self.app.send_task(TRAIN_TASK, kwargs=kwargs, queue=TRAIN_QUEUE, ignore_result=True)
        return run_id

    def connect(self) -> NewsClient:
        """Open the connection that sends go through (retried as `redis()` is) and load what
        Celery's first send would otherwise load on the way: the producer and the result
        backend class, looked up among the installed packages' entry points. Here a fresh
        client's first one-article send took 20-35 ms without this and 3 ms with it, the next
        ones under 1 ms: the first article of a light load would wait twice its usual latency.
        `with NewsClient(...)` calls it; a send connects without it, too.
        """
        self.redis().ping()
        self._producer_for_send()
        self.app.backend  # noqa: B018  (a property that loads on first use)
        return self

    def connection(self) -> Any:
        """The client's broker connection (kombu), opened on first use."""
        if self._connection is None:
            self._connection = self.app.connection_for_write()
        return self._connection

    def redis(self) -> Any:
        """The redis-py client the client's sends go through (works for every broker URL form)."""
        return self._channel().shared_client

    def queue_length(self) -> int:
        """Messages waiting in the classify queue, all priority lists together."""
        pipe = self.redis().pipeline(transaction=False)
        for name in priority_lists(CLASSIFY_QUEUE):
            pipe.llen(name)
        return int(sum(pipe.execute()))

    def _channel(self) -> Any:
        # Three retries, 2 + 4 + 6 s apart (kombu's intervals): a Redis restart is ridden out.
        connection = self.connection().ensure_connection(errback=self._retrying, max_retries=3)
        return connection.default_channel

    def _retrying(self, exc: Exception, interval: float) -> None:
        """Each retry is said, so that a wait on an unreachable broker is not a silent hang."""
        log.warning(
            "broker %s unreachable (%s): retrying in %.0f s", redact(self.broker_url), exc, interval
        )

    def wait_for_room(
        self, max_queue: int, on_wait: Callable[[int], None] | None = None, poll: float = 0.5
    ) -> None:
        """Block while more than `max_queue` messages wait; nothing is dropped, only delayed.

        Call it before each message sent. The queue is only measured once the messages sent
        since the last measurement could have filled it, so the queue never exceeds
        `max_queue + 1` and a fast producer pays one round trip per many messages.
        """
        if self._room > 0:
            self._room -= 1
            return
        if self._pipeline is not None:
            self._pipeline.flush()  # what was sent counts before the queue is measured
        while (length := self.queue_length()) > max_queue:
            if on_wait is not None:
                on_wait(length)
            time.sleep(poll)
        self._room = max_queue - length

    def workers(self, timeout: float = 1.0) -> list[dict[str, Any]]:
        """The live workers' name, device, model version, metrics port and pid: each answers
        the `newsq_info` control command within `timeout` (model version None: it serves no
        classify queue yet)."""
        replies = self.app.control.broadcast("newsq_info", reply=True, timeout=timeout)
        found = [{"name": name, **info} for reply in replies for name, info in reply.items()]
        return sorted(found, key=lambda w: str(w["name"]))

    def wait_for_model(self, version: str, timeout: float = 300.0) -> None:
        """Block until every live classify worker serves `version`: after a promotion, before
        sending what the new model should classify (a worker loads it in the background within
        NEWSQ_RELOAD_INTERVAL_S plus the load). TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            serving = {w["model_version"] for w in self.workers() if w.get("model_version")}
            if serving == {version}:
                return
            if time.monotonic() > deadline:
                answer = ", ".join(sorted(serving)) or "no classify worker answered"
                raise TimeoutError(
                    f"not every worker serves {version} after {timeout:.0f}s: {answer}"
                )
            time.sleep(0.5)

    def results(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The current prediction of each id that has one (from the `latest_predictions` view)."""
        from db.queries import latest_rows

        return latest_rows(self._db(), ids)

    def wait(
        self, ids: Sequence[str], timeout: float = 300.0, poll: float = 0.5
    ) -> dict[str, dict[str, Any]]:
        """Block until every id has a prediction, then return them; TimeoutError otherwise."""
        from db.queries import found_ids

        pending = set(ids)
        deadline = time.monotonic() + timeout
        while pending:
            pending -= found_ids(self._db(), list(pending))
            if not pending:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(pending)} of {len(set(ids))} articles not classified "
                    f"within {timeout:.0f}s"
                )
            time.sleep(poll)
        return self.results(ids)

    def _db(self) -> Any:
        if self.database_url is None:
            raise ValueError("NewsClient(database_url=...) is needed to read results")
        if self._engine is None:
            from db.engine import make_engine

            self._engine = make_engine(self.database_url)
        return self._engine

    def close(self) -> None:
        if self._connection is not None:
            self._connection.release()
        self.app.close()
        if self._engine is not None:
            self._engine.dispose()

    def __enter__(self) -> NewsClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()
