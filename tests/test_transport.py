"""The producer's transport: kombu's Redis channel with one redis-py client for every publish,
and enqueue's pipelines of messages."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import kombu.common
import pytest
import redis

from newsq.settings import Settings
from producer import transport
from producer.client import PIPELINE_MESSAGES, NewsClient, celery_client
from producer.contract import CLASSIFY_QUEUE
from tests.helpers import message_ids, redis_behind_proxy
from worker import broker
from worker.app import create_app


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379/0", "rediss://localhost:6380/1", "redis+socket:///tmp/r.sock"]
)
def test_every_broker_url_form_gets_newsq_transports(url: str) -> None:
    """kombu would pick its own transport for a `redis+socket://` URL (producer/transport.py)."""
    client = celery_client(url).connection_for_write()
    assert isinstance(client.transport, transport.Transport)
    worker = create_app(Settings(broker_url=url)).connection_for_write()
    assert isinstance(worker.transport, broker.Transport)
    if url.startswith("redis+socket://"):  # the socket path reaches kombu's Redis channel
        assert client.hostname == worker.hostname == "socket:///tmp/r.sock"


@pytest.mark.services
def test_publishes_share_one_client_and_arrive(clean_redis: str) -> None:
    with NewsClient(clean_redis) as client:
        client.enqueue([{"title": f"新闻{i}"} for i in range(3)], chunk_size=1)
        channel = client.connection().default_channel
        assert isinstance(channel, transport.Channel)
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second is channel.shared_client
        client.enqueue([{"title": "再来一条"}], chunk_size=1)
    assert redis.Redis.from_url(clean_redis).llen(CLASSIFY_QUEUE) == 4


@pytest.mark.services
def test_a_client_opened_by_with_sends_its_first_article_on_an_open_connection(
    clean_redis: str,
) -> None:
    server = redis.Redis.from_url(clean_redis)
    db = str(server.connection_pool.connection_kwargs["db"])

    def connections() -> int:
        return sum(1 for c in server.client_list() if c["db"] == db)

    with NewsClient(clean_redis) as client:
        opened = connections()
        client.enqueue([{"id": "first", "title": "第一条"}], chunk_size=1)
        assert connections() == opened  # the send found its connection open
    assert queued_ids(clean_redis) == ["first"]


def queued_ids(redis_url: str) -> list[str]:
    """Article ids of the messages in the classify queue, oldest first."""
    client = redis.Redis.from_url(redis_url)
    return [i for raw in reversed(client.lrange(CLASSIFY_QUEUE, 0, -1)) for i in message_ids(raw)]


@pytest.mark.services
def test_enqueue_sends_one_article_messages_in_pipelines(
    clean_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sends = 0
    original: Callable[..., None] = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        nonlocal sends
        sends += 1
        original(self, command, check_health)

    count = PIPELINE_MESSAGES + 44
    with NewsClient(clean_redis) as client:
        client.enqueue([{"id": "warm", "title": "预热"}], chunk_size=1)  # connects
        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
        client.enqueue([{"id": f"p-{i}", "title": f"新闻{i}"} for i in range(count)], chunk_size=1)
    assert sends == 2  # two pipelines, where each message took a round trip of its own
    assert queued_ids(clean_redis) == ["warm"] + [f"p-{i}" for i in range(count)]


@pytest.mark.services
def test_a_pipeline_that_fails_is_sent_again_message_by_message(
    clean_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    proxy, url = redis_behind_proxy(clean_redis)
    with NewsClient(url) as client:
        client.enqueue([{"id": "before", "title": "之前"}], chunk_size=1)
        proxy.cut()  # Redis is unreachable when the pipeline goes out...
        threading.Timer(1.0, proxy.open).start()  # ...and back while each message is retried
        client.enqueue([{"id": f"f-{i}", "title": f"新闻{i}"} for i in range(5)], chunk_size=1)
    assert "a pipeline of 5 messages failed" in caplog.text
    assert queued_ids(clean_redis) == ["before"] + [f"f-{i}" for i in range(5)]
    proxy.cut()


@pytest.mark.services
def test_backpressure_counts_what_a_pipeline_holds(clean_redis: str) -> None:
    r = redis.Redis.from_url(clean_redis)
    seen: list[int] = []
    taken: list[Any] = []
    done = threading.Event()

    def slow_consumer() -> None:
        while not done.is_set() or r.llen(CLASSIFY_QUEUE):
            seen.append(r.llen(CLASSIFY_QUEUE))
            if item := r.rpop(CLASSIFY_QUEUE):
                taken.append(item)
            time.sleep(0.02)

    consumer = threading.Thread(target=slow_consumer)
    consumer.start()
    with NewsClient(clean_redis, max_queue=5) as client:
        client.enqueue([{"id": f"b-{i}", "title": f"新闻{i}"} for i in range(30)], chunk_size=1)
    done.set()
    consumer.join(30)
    assert max(seen) <= 6  # max_queue + 1, though all 30 went through one pipeline batch
    assert [i for raw in taken for i in message_ids(raw)] == [f"b-{i}" for i in range(30)]


@pytest.mark.services
def test_a_message_is_sent_without_declaring_the_queue(
    clean_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    declared: list[Any] = []
    original: Callable[..., Any] = kombu.common.maybe_declare  # what kombu.messaging calls

    def counting(entity: Any, *args: Any, **kwargs: Any) -> Any:
        declared.append(entity)
        return original(entity, *args, **kwargs)

    monkeypatch.setattr("kombu.messaging.maybe_declare", counting)
    with NewsClient(clean_redis) as client:
        client.enqueue([{"id": f"d-{i}", "title": f"新闻{i}"} for i in range(5)], chunk_size=1)
    assert declared == []
    assert queued_ids(clean_redis) == [f"d-{i}" for i in range(5)]
