"""A worker's prefetch credit follows the articles per message (worker/prefetch.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kombu.common import QoS

from worker.prefetch import MAX_MESSAGES, START_ARTICLES_PER_MESSAGE, InHand, credit


def test_credit_is_articles_over_message_size_within_bounds() -> None:
    assert credit(256, 32768, floor=8, ceiling=4096) == 128
    assert credit(1, 32768, floor=8, ceiling=4096) == 4096  # capped
    assert credit(1024, 2048, floor=8, ceiling=4096) == 8  # at least the task threads
    assert credit(0.2, 100, floor=1, ceiling=4096) == 100  # a mean under 1 counts as 1


@dataclass
class Consumer:
    """The two attributes of Celery's consumer that InHand reads, around kombu's real QoS."""

    initial_prefetch_count: int = 8
    applied: list[int] = field(default_factory=list)
    qos: QoS = field(init=False)

    def __post_init__(self) -> None:
        self.reconnect()

    def reconnect(self) -> None:
        """Celery builds a new QoS at its initial credit on each connection."""
        self.qos = QoS(self._set, 8)

    def _set(self, prefetch_count: int) -> None:
        self.applied.append(prefetch_count)

    def loop_turn(self) -> int:
        """What Celery's event loop does each turn: apply a changed credit."""
        if self.qos.prev != self.qos.value:
            self.qos.update()
        return int(self.qos.value)


def test_the_credit_grows_for_small_messages_and_shrinks_for_large_ones() -> None:
    consumer, in_hand = Consumer(), InHand(32768, floor=8)
    in_hand.attach(consumer)
    assert consumer.loop_turn() == 32768 // START_ARTICLES_PER_MESSAGE == in_hand.messages()
    for _ in range(200):
        in_hand.observe(1)
    # Within the 25% a change needs of the rule's credit, taken in a few steps.
    assert 0.75 * MAX_MESSAGES <= consumer.loop_turn() == in_hand.messages() <= MAX_MESSAGES
    for _ in range(200):
        in_hand.observe(1024)
    assert 32 <= consumer.loop_turn() == in_hand.messages() <= 32 / 0.75
    assert 3 <= len(consumer.applied) <= 8


def test_one_odd_message_moves_the_credit_little_and_a_new_connection_gets_it_back() -> None:
    consumer, in_hand = Consumer(), InHand(32768, floor=8)
    in_hand.attach(consumer)
    for _ in range(100):
        in_hand.observe(256)
    in_hand.observe(200)  # within the 25% a change needs: no update
    assert consumer.loop_turn() == 128 and consumer.applied == [128]
    consumer.reconnect()
    assert consumer.loop_turn() == 8
    in_hand.observe(256)
    assert 128 <= consumer.loop_turn() == in_hand.messages() <= 132


def test_before_a_consumer_is_attached_the_floor_is_the_credit() -> None:
    in_hand = InHand(32768, floor=8)
    in_hand.observe(1)
    assert in_hand.messages() == 8
