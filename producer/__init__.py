"""The client side of newsq: the wire contract and `NewsClient`. Never imports torch."""

from producer.client import NewsClient
from producer.contract import (
    CLASSIFY_QUEUE,
    CLASSIFY_TASK,
    CONTRACT_VERSION,
    TRAIN_QUEUE,
    TRAIN_TASK,
    Article,
)

__all__ = [
    "CLASSIFY_QUEUE",
    "CLASSIFY_TASK",
    "CONTRACT_VERSION",
    "TRAIN_QUEUE",
    "TRAIN_TASK",
    "Article",
    "NewsClient",
]
