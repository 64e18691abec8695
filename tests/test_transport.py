"""The producer's transport: kombu's Redis channel with one redis-py client for every publish."""

from __future__ import annotations

import pytest
import redis

from producer import transport
from producer.client import NewsClient
from producer.contract import CLASSIFY_QUEUE


@pytest.mark.services
def test_publishes_share_one_client_and_arrive(clean_redis: str) -> None:
    with NewsClient(clean_redis) as client:
        client.enqueue([{"title": f"新闻{i}"} for i in range(3)], chunk_size=1)
        channel = client.connection().default_channel
        assert isinstance(channel, transport.Channel)
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second is channel._shared_client
        client.enqueue([{"title": "再来一条"}], chunk_size=1)
    assert redis.Redis.from_url(clean_redis).llen(CLASSIFY_QUEUE) == 4
