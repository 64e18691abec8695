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

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

# `broker_transport` of a Celery app; broker URLs stay `redis://`, `rediss://`, `redis+socket://`.
TRANSPORT = "producer.transport:Transport"
SOCKET_SCHEME = "redis+socket://"


def broker_url(url: str, transport: str) -> str:
    """The URL to give Celery so that its connections use `transport` (an import path).

    kombu takes the transport of a `redis+socket://PATH` URL from the URL's prefix, over the
    app's `broker_transport`: with such a URL, clients and workers ran kombu's own Redis
    transport, without the shared client here or the workers' fetch that a SIGKILL cannot lose.
    It reaches kombu as `ALIAS+socket://PATH` instead, ALIAS naming `transport` (e.g.
    `newsq-worker-broker-transport`); kombu's Redis channel reads the `socket://` part as
    before. Other URLs are unchanged.
    """
    if not url.startswith(SOCKET_SCHEME):
        return url
    alias = "newsq-" + transport.replace(".", "-").replace(":", "-").lower()
    TRANSPORT_ALIASES.setdefault(alias, transport)
    return f"{alias}+socket://{url.removeprefix(SOCKET_SCHEME)}"


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
