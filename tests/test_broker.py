"""The workers' Redis transport (worker/broker.py) against a real Redis: a fetch records the
message as unacked in the same step, so a worker that dies before reading the reply loses
nothing; the blocking wait takes nothing off the list."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from queue import Empty

import pytest
import redis
from kombu.asynchronous import Hub
from kombu.connection import Connection
from kombu.message import Message

from producer.client import NewsClient
from producer.contract import BROKER_TRANSPORT_OPTIONS, CLASSIFY_QUEUE
from tests.helpers import redis_behind_proxy, wait_until
from worker.broker import Channel, Transport


@pytest.fixture
def channel(clean_redis: str) -> Iterator[tuple[Channel, list[Message]]]:
    """A consuming channel of the workers' transport; yields it and the messages delivered."""
    options = {**BROKER_TRANSPORT_OPTIONS, "visibility_timeout": 1}
    with Connection(clean_redis, transport=Transport, transport_options=options) as conn:
        delivered: list[Message] = []
        chan = conn.default_channel
        chan.basic_consume(CLASSIFY_QUEUE, False, delivered.append, "test")
        # What kombu's poller does before its first fetch: give the client its own connection.
        chan.client.connection = chan.client.connection_pool.get_connection()
        yield chan, delivered


def send_one(redis_url: str, article_id: str) -> None:
    with NewsClient(redis_url) as client:
        client.enqueue([(article_id, "央行宣布降准", None)])


def test_a_worker_dying_before_it_reads_the_fetch_reply_loses_nothing(
    clean_redis: str, channel: tuple[Channel, list[Message]]
) -> None:
    chan, delivered = channel
    r = redis.Redis.from_url(clean_redis)
    send_one(clean_redis, "a-1")
    chan._brpop_start()  # the fetch is sent; the "worker" never reads its reply
    wait_until(lambda: r.llen(CLASSIFY_QUEUE) == 0, timeout=10)
    assert r.hlen(chan.unacked_key) == 1 and r.zcard(chan.unacked_index_key) == 1
    assert delivered == []
    chan.client.connection.disconnect()  # dies here

    time.sleep(1.1)  # past the visibility timeout: any worker's sweep puts it back
    chan.qos.restore_visible(num=10, interval=1)
    assert r.hlen(chan.unacked_key) == 0
    (restored,) = r.lrange(CLASSIFY_QUEUE, 0, -1)
    payload = json.loads(restored)
    assert payload["headers"]["redelivered"] is True
    assert b'"a-1"' in base64.b64decode(payload["body"])


def test_waiting_on_an_empty_queue_takes_nothing_and_the_next_fetch_delivers(
    clean_redis: str, channel: tuple[Channel, list[Message]]
) -> None:
    chan, delivered = channel
    r = redis.Redis.from_url(clean_redis)
    chan._brpop_start()
    with pytest.raises(Empty):
        chan._brpop_read()  # nothing queued: the pop finds nothing
    chan._brpop_start()  # now the blocking wait
    send_one(clean_redis, "b-1")
    with pytest.raises(Empty):
        chan._brpop_read()  # the wait returns: something arrived, nothing taken
    assert r.llen(CLASSIFY_QUEUE) == 1 and delivered == []

    chan._brpop_start()
    assert chan._brpop_read() is True
    assert len(delivered) == 1 and delivered[0].delivery_tag is not None
    assert r.llen(CLASSIFY_QUEUE) == 0
    assert r.hexists(chan.unacked_key, delivered[0].delivery_tag)
    delivered[0].ack()
    assert r.hlen(chan.unacked_key) == 0 and r.zcard(chan.unacked_index_key) == 0


def test_one_fetch_takes_up_to_the_prefetch_credit_and_records_each(
    clean_redis: str, channel: tuple[Channel, list[Message]]
) -> None:
    chan, delivered = channel
    r = redis.Redis.from_url(clean_redis)
    chan.basic_qos(prefetch_count=3)
    with NewsClient(clean_redis) as client:
        client.enqueue([(f"c-{i}", f"标题{i}", None) for i in range(5)], chunk_size=1)
    chan._brpop_start()
    assert chan._brpop_read() is True
    assert len(delivered) == 3  # one round trip, three messages: the credit
    assert r.llen(CLASSIFY_QUEUE) == 2
    held = {t.decode() if isinstance(t, bytes) else t for t in r.hkeys(chan.unacked_key)}
    assert {m.delivery_tag for m in delivered} == held
    assert chan.qos.can_consume_max_estimate() == 0


def zrem_calls(r: redis.Redis) -> int:
    return int(r.info("commandstats").get("cmdstat_zrem", {}).get("calls", 0))


def test_in_an_event_loop_the_acks_of_a_turn_reach_redis_together_at_its_end(
    clean_redis: str, channel: tuple[Channel, list[Message]]
) -> None:
    chan, delivered = channel
    r = redis.Redis.from_url(clean_redis)
    hub = Hub()
    chan.connection.register_with_event_loop(chan.connection, hub)  # what a worker does
    chan.basic_qos(prefetch_count=5)
    with NewsClient(clean_redis) as client:
        client.enqueue([(f"d-{i}", f"标题{i}", None) for i in range(5)], chunk_size=1)
    chan._brpop_start()
    assert chan._brpop_read() is True and len(delivered) == 5
    before = zrem_calls(r)

    for message in delivered:
        message.ack()
    assert chan.qos.can_consume_max_estimate() == 5  # the credit is back at once
    assert r.hlen(chan.unacked_key) == 5  # Redis hears of the acks at the end of the turn

    for tick in list(hub.on_tick):  # the end of the loop's turn
        tick()
    assert r.hlen(chan.unacked_key) == 0 and r.zcard(chan.unacked_index_key) == 0
    assert zrem_calls(r) - before == 1  # one transaction for the five


def test_closing_the_channel_sends_the_acks_not_yet_sent(
    clean_redis: str, channel: tuple[Channel, list[Message]]
) -> None:
    chan, delivered = channel
    r = redis.Redis.from_url(clean_redis)
    chan.connection.register_with_event_loop(chan.connection, Hub())
    send_one(clean_redis, "e-1")
    chan._brpop_start()
    assert chan._brpop_read() is True
    delivered[0].ack()
    assert r.hlen(chan.unacked_key) == 1
    chan.close()  # a worker's shutdown: no turn of the loop ends after the ack
    assert r.hlen(chan.unacked_key) == 0 and r.zcard(chan.unacked_index_key) == 0


def test_acks_that_cannot_reach_redis_wait_for_the_next_turn(
    clean_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    r = redis.Redis.from_url(clean_redis)
    proxy, url = redis_behind_proxy(clean_redis)
    with Connection(url, transport=Transport, transport_options=BROKER_TRANSPORT_OPTIONS) as conn:
        delivered: list[Message] = []
        chan = conn.default_channel
        chan.basic_consume(CLASSIFY_QUEUE, False, delivered.append, "test")
        chan.client.connection = chan.client.connection_pool.get_connection()
        chan.connection.register_with_event_loop(chan.connection, Hub())
        send_one(clean_redis, "g-1")
        chan._brpop_start()
        assert chan._brpop_read() is True
        delivered[0].ack()
        proxy.cut()
        chan.qos.flush_acks()  # Redis is unreachable: the ack is kept
        assert "could not send 1 acks to Redis yet" in caplog.text
        assert chan.qos.acked == [delivered[0].delivery_tag] and r.hlen(chan.unacked_key) == 1
        proxy.open()
        chan.qos.flush_acks()  # the next turn, Redis is back
        assert chan.qos.acked == [] and r.hlen(chan.unacked_key) == 0
    proxy.cut()
