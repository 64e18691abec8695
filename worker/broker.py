"""The workers' Redis transport: kombu's, with a fetch that a SIGKILL cannot lose.

kombu's Redis transport BRPOPs a message off its list and only afterwards, in Python, copies it
into the `unacked` hash that the visibility-timeout sweep restores from. A worker killed
between the two, even with the reply still unread in its socket, loses that message for good
(kombu issue #305); the chaos test hit it in about one run in four, a few milliseconds after a
worker took new messages.

Here one Lua script pops messages and records them as unacked, so at every instant a message
is in a queue list or in the unacked hash. It takes up to the prefetch credit (at most
POP_LIMIT) in one round trip, where BRPOP takes one. A script cannot block, so when every list
is empty the channel waits with `BLMOVE list list RIGHT RIGHT`, which blocks like BRPOP but,
moving an element onto the end it came from, takes nothing; then it runs the script again. The
wait watches one list (the first queue's highest-priority list, where messages without a priority
go): on an idle worker a message in another list is seen within `brpop_timeout` (1 s).

An ack deletes the message from the unacked hash and index: kombu sends that as one transaction
per message, a round trip that blocked the event loop for ~0.2 ms and cost ~140 us of its CPU
time each, the largest per-message cost left with one-article messages. In a worker's event loop
the acks of one loop turn are sent together instead, in one transaction at the end of the turn;
the prefetch credit is returned at once, as before. Until then a crash leaves those messages in
the hash, to be redelivered after the visibility timeout: the at-least-once that a crash just
before any ack gives, and their rows, already committed, are upserted again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str

from producer import transport
from worker.serializer import loads

log = logging.getLogger(__name__)

# KEYS: unacked index (zset), unacked (hash), then the lists in the order BRPOP would read them.
# ARGV: the time to score the deliveries with (the sweep compares it with the worker's clock),
# and how many messages to take at most. Returns {list, message, recorded, list, message, ...};
# recorded is 0 for a body that is not a kombu envelope, which Python then records (or rejects)
# exactly as kombu would.
POP_AND_RECORD = """
local taken = {}
local limit = tonumber(ARGV[2])
for i = 3, #KEYS do
  while #taken < 3 * limit do
    local item = redis.call('RPOP', KEYS[i])
    if not item then break end
    local ok, message = pcall(cjson.decode, item)
    local properties = ok and type(message) == 'table' and message['properties']
    local info = type(properties) == 'table' and properties['delivery_info']
    local tag = type(properties) == 'table' and properties['delivery_tag']
    local recorded = 0
    if type(info) == 'table' and type(tag) == 'string' then
      redis.call('ZADD', KEYS[1], ARGV[1], tag)
      redis.call('HSET', KEYS[2], tag, '[' .. item .. ',' .. cjson.encode(info['exchange'] or '')
        .. ',' .. cjson.encode(info['routing_key'] or '') .. ']')
      recorded = 1
    end
    table.insert(taken, KEYS[i])
    table.insert(taken, item)
    table.insert(taken, recorded)
  end
end
return taken
"""
# Messages taken per round trip at most (within the prefetch credit): one-article messages
# then cost one Redis call per batch of them instead of one each.
POP_LIMIT = 64


class QoS(kombu_redis.QoS):
    """Skips the unacked writes for deliveries the pop script has recorded already, and sends
    the acks of an event loop's turn together."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorded: set[str] = set()
        self.acked: list[str] = []  # acked here, still in Redis's unacked hash until flushed

    def ack(self, delivery_tag: str) -> None:
        if not self.channel.connection.acks_deferred:
            super().ack(delivery_tag)
            return
        self.acked.append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def flush_acks(self) -> None:
        """Delete the acked messages from the unacked hash and index, in one transaction; on a
        connection error they stay for the next try (or, should the worker die, for redelivery)."""
        if not self.acked:
            return
        tags = self.acked
        try:
            with self.pipe_or_acquire() as pipe:
                pipe.zrem(self.unacked_index_key, *tags).hdel(self.unacked_key, *tags).execute()
        except self.channel.connection_errors as exc:
            log.warning("could not send %d acks to Redis yet: %r", len(tags), exc)
            return
        tags.clear()

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.recorded:
            self.recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)


class Channel(transport.Channel):
    """Alternates the atomic pop with a blocking, non-consuming wait (and shares one redis-py
    client for acks and restores, as producer.transport does for publishes)."""

    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending = ""  # the command in flight: "EVAL" or "BLMOVE"
        self._lists_empty = False  # the last pop found nothing: wait before the next one

    def close(self) -> None:
        self.qos.flush_acks()
        super().close()

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        lists = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        prefix = self.global_keyprefix
        if self._lists_empty:
            wait = self.brpop_timeout if timeout is None else timeout
            key = prefix + lists[0]
            command: list[Any] = ["BLMOVE", key, key, "RIGHT", "RIGHT", wait or 0]
            self._pending = "BLMOVE"
        else:
            keys = [prefix + self.unacked_index_key, prefix + self.unacked_key]
            keys += [prefix + name for name in lists]
            limit = min(POP_LIMIT, self.qos.can_consume_max_estimate() or 1)
            command = ["EVAL", POP_AND_RECORD, len(keys), *keys, time.time(), limit]
            self._pending = "EVAL"
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]  # kombu: = None
        self.client.connection.send_command(*command)

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                reply = self.client.parse_response(self.client.connection, self._pending, **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if self._pending == "BLMOVE":
                # Something may have arrived (or the wait timed out): pop on the next turn.
                self._lists_empty = False
                raise virtual.Empty()
            if not reply:
                self._lists_empty = True
                raise virtual.Empty()
            for at in range(0, len(reply), 3):
                name, item, recorded = reply[at : at + 3]
                queue = bytes_to_str(name)[len(self.global_keyprefix) :].rsplit(self.sep, 1)[0]
                # The envelope, by the worker's decoder (worker/serializer.py): 7 against 24 µs
                # with kombu's for a one-article message, 31 against 50 for 256 titles.
                message = loads(item)
                if recorded:
                    self.qos.recorded.add(message["properties"]["delivery_tag"])
                self._queue_cycle.rotate(queue)
                self.connection._deliver(message, queue)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu: bool | connection
            self._flush_brpop_reauth()


class Transport(kombu_redis.Transport):
    """`broker_transport = "worker.broker:Transport"`; broker URLs stay `redis://`."""

    Channel = Channel
    # Set once an event loop drives the transport (a worker), which then flushes acks each turn;
    # without one (a plain kombu consumer) an ack is sent at once, as kombu does.
    acks_deferred = False

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        loop.on_tick.add(self._flush_acks)
        self.acks_deferred = True

    def _flush_acks(self) -> None:
        for channel in self.channels:
            channel.qos.flush_acks()
