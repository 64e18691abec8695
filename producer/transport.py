"""The Redis transport of newsq's Celery apps: kombu's, with one redis-py client per channel.

kombu's Redis channel builds a new redis-py client object for every publish, ack and restore
(`conn_or_acquire`), and redis-py's constructor alone was a fifth of the producer's CPU time
with one-article messages. The client is thread-safe and takes a connection from the pool for
each command, so one per channel serves them all. The workers' transport (worker/broker.py)
builds on this channel.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any

from kombu.transport import redis as kombu_redis

# `broker_transport` of a Celery app; broker URLs stay `redis://`, `rediss://`, `redis+socket://`.
TRANSPORT = "producer.transport:Transport"


class Channel(kombu_redis.Channel):
    @cached_property
    def shared_client(self) -> Any:
        """The redis-py client of every publish, ack and restore on this channel."""
        return self._create_client()

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client or self.shared_client


class Transport(kombu_redis.Transport):
    Channel = Channel
