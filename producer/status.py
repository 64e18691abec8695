"""What `newsq status` reports: queues, live workers, the promoted model, throughput, rejects.

Every URL is shown without its password: status output ends up in tickets and chat rooms.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Engine

from db import queries
from db.models import Prediction, Reject, utcnow
from producer.client import NewsClient, redact
from producer.contract import CLASSIFY_QUEUE, PRIORITY_STEPS, TRAIN_QUEUE, priority_lists


def collect(
    client: NewsClient, engine: Engine, database_url: str, timeout: float = 1.0
) -> dict[str, Any]:
    redis = client.redis()
    classify = {
        f"{CLASSIFY_QUEUE} (priority {step})": int(redis.llen(name))
        for step, name in zip(PRIORITY_STEPS, priority_lists(CLASSIFY_QUEUE), strict=True)
    }
    now = utcnow()
    return {
        "broker": redact(client.broker_url),
        "database": redact(database_url),
        "queues": {**classify, TRAIN_QUEUE: int(redis.llen(TRAIN_QUEUE))},
        "workers": client.workers(timeout),
        "promoted_model": _jsonable(queries.promoted_version(engine)),
        "classified_last_minute": queries.count_since(
            engine, Prediction, now - timedelta(minutes=1)
        ),
        "rejects_total": queries.count_since(engine, Reject),
        "rejects_last_hour": queries.count_since(engine, Reject, now - timedelta(hours=1)),
    }


def _jsonable(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in row.items()}
