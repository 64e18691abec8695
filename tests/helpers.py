"""Helpers shared by the tests that drive real workers: sample articles, polling, raw messages."""

from __future__ import annotations

import time

from kombu.connection import Connection
from sqlalchemy import Engine, select

from db.models import Prediction, Reject
from producer.contract import BROKER_TRANSPORT_OPTIONS, CLASSIFY_QUEUE, CLASSIFY_TASK


def titles(count: int, prefix: str) -> list[tuple[str, str, None]]:
    words = ["央行", "股市", "球队", "游戏", "电影", "学校", "楼市", "科技", "政府", "社会"]
    return [
        (f"{prefix}-{i}", f"{words[i % 10]}新闻第{i}条：{words[(i * 7) % 10]}动态", None)
        for i in range(count)
    ]


def wait_until(predicate: object, timeout: float = 120.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout:.0f}s")


def prediction_rows(engine: Engine, ids: list[str]) -> list[Prediction]:
    with engine.connect() as conn:
        query = select(Prediction).where(Prediction.article_id.in_(ids))
        return list(conn.execute(query).all())  # type: ignore[arg-type]


def rejects_of(engine: Engine, message_id: str) -> list[Reject]:
    with engine.connect() as conn:
        query = select(Reject).where(Reject.message_id == message_id).order_by(Reject.position)
        return list(conn.execute(query).all())  # type: ignore[arg-type]


def publish_raw(redis_url: str, body: bytes, content_type: str, task_id: str) -> None:
    """Put a hand-made protocol v2 envelope on the queue, bypassing Celery's serializer."""
    with Connection(redis_url, transport_options=BROKER_TRANSPORT_OPTIONS) as conn:
        producer = conn.Producer()
        producer.publish(
            body,
            routing_key=CLASSIFY_QUEUE,
            content_type=content_type,
            content_encoding="binary" if content_type.endswith("serialize") else "utf-8",
            headers={"task": CLASSIFY_TASK, "id": task_id, "lang": "py"},
            declare=[],
        )
