"""Reads of the results, shared by the demo, the client and the tests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, column, func, select, table

from db.models import Prediction, Reject

# The documented view (db/migrations/versions/0001_initial.py), as a selectable.
latest_predictions = table(
    "latest_predictions",
    column("article_id"),
    column("title"),
    column("source"),
    column("label"),
    column("label_id"),
    column("score"),
    column("model_version"),
    column("probs"),
    column("classified_at"),
)


def committed_count(engine: Engine, ids: Sequence[str], since: datetime | None = None) -> int:
    """How many of `ids` have a prediction (written at or after `since`, when given)."""
    query = select(func.count(func.distinct(Prediction.article_id))).where(
        Prediction.article_id.in_(ids)
    )
    if since is not None:
        query = query.where(Prediction.created_at >= since)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def label_counts(engine: Engine, ids: Sequence[str]) -> list[tuple[str, int]]:
    """Per label, how many of `ids` carry it in the results view, most frequent first."""
    count = func.count().label("n")
    query = (
        select(latest_predictions.c.label, count)
        .where(latest_predictions.c.article_id.in_(ids))
        .group_by(latest_predictions.c.label)
        .order_by(count.desc())
    )
    with engine.connect() as conn:
        return [(str(label), int(n)) for label, n in conn.execute(query)]


def latest_labels(engine: Engine, ids: Sequence[str]) -> dict[str, str]:
    query = select(latest_predictions.c.article_id, latest_predictions.c.label).where(
        latest_predictions.c.article_id.in_(ids)
    )
    with engine.connect() as conn:
        return {str(a): str(label) for a, label in conn.execute(query)}


def reject_count(engine: Engine, since: datetime | None = None) -> int:
    query = select(func.count()).select_from(Reject)
    if since is not None:
        query = query.where(Reject.created_at >= since)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def rejects_of(engine: Engine, message_id: str) -> list[dict[str, Any]]:
    query = select(Reject).where(Reject.message_id == message_id).order_by(Reject.position)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]
