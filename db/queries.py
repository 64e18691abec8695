"""Reads of the results, shared by the demo, the client, the ingest script and the tests.

Queries over caller-given ids run in IN-lists of bounded size: neither SQLite nor PostgreSQL
wants a million bind parameters in one statement.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVarTuple

from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    Float,
    Integer,
    Select,
    String,
    Text,
    and_,
    column,
    func,
    select,
    table,
)

from db.models import ArticleRow, ModelVersion, Prediction, Reject

# The documented view (db/migrations/versions/0001_initial.py), as a selectable.
latest_predictions = table(
    "latest_predictions",
    column("article_id", String),
    column("title", Text),
    column("source", String),
    column("label", String),
    column("label_id", Integer),
    column("score", Float),
    column("model_version", String),
    column("probs", JSON),
    column("classified_at", DateTime(timezone=True)),
)

CHUNK = 5000


def _rows_by_chunk(
    engine: Engine, ids: Sequence[str], query_for: Callable[[Sequence[str]], Select[Any]]
) -> Iterator[Any]:
    with engine.connect() as conn:
        for start in range(0, len(ids), CHUNK):
            yield from conn.execute(query_for(ids[start : start + CHUNK]))


def found_ids(engine: Engine, ids: Sequence[str], since: datetime | None = None) -> set[str]:
    """Which of `ids` have a prediction (written at or after `since`, when given)."""

    def query(part: Sequence[str]) -> Select[Any]:
        q = select(Prediction.article_id).where(Prediction.article_id.in_(part))
        return q.where(Prediction.created_at >= since) if since is not None else q

    return {str(row[0]) for row in _rows_by_chunk(engine, ids, query)}


def committed_count(engine: Engine, ids: Sequence[str], since: datetime | None = None) -> int:
    return len(found_ids(engine, ids, since))


def latest_rows(engine: Engine, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The `latest_predictions` row of each id that has one."""
    rows = _rows_by_chunk(
        engine,
        ids,
        lambda part: select(latest_predictions).where(latest_predictions.c.article_id.in_(part)),
    )
    return {str(row.article_id): dict(row._mapping) for row in rows}


def latest_labels(engine: Engine, ids: Sequence[str]) -> dict[str, str]:
    view = latest_predictions.c
    rows = _rows_by_chunk(
        engine,
        ids,
        lambda part: select(view.article_id, view.label).where(view.article_id.in_(part)),
    )
    return {str(row[0]): str(row[1]) for row in rows}


def label_counts(engine: Engine, ids: Sequence[str]) -> list[tuple[str, int]]:
    """Per label, how many of `ids` carry it in the results view, most frequent first."""
    return Counter(latest_labels(engine, ids).values()).most_common()


def promoted_version(engine: Engine) -> dict[str, Any] | None:
    """The model version promoted last, if any."""
    query = (
        select(ModelVersion.version, ModelVersion.path, ModelVersion.promoted_at)
        .where(ModelVersion.promoted_at.is_not(None))
        .order_by(ModelVersion.promoted_at.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return dict(row._mapping) if row is not None else None


def count_since(
    engine: Engine, model: type[Prediction] | type[Reject], since: datetime | None = None
) -> int:
    """Rows of predictions or rejects written at or after `since` (all rows when None)."""
    query = select(func.count()).select_from(model)
    if since is not None:
        query = query.where(model.created_at >= since)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


Columns = TypeVarTuple("Columns")


def _without_prediction_of(
    query: Select[*Columns],
    version: str,
    since: datetime | None,
    source: str | None,
    after: str = "",
) -> Select[*Columns]:
    """Articles with ids past `after` that `version` has not classified: an anti-join on the
    predictions' unique (article_id, model_version) index. The bound is on both sides: without
    it on the predictions', PostgreSQL's merge anti-join read their index from its start for
    every page (200,000 articles, analyzed: a page of 4,096 took 25 ms at the start and 64 ms
    near the end, 20 ms throughout with the bound), so a long table cost its square."""
    mine = and_(
        Prediction.article_id == ArticleRow.id,
        Prediction.model_version == version,
        Prediction.article_id > after,
    )
    query = query.outerjoin(Prediction, mine)
    query = query.where(Prediction.article_id.is_(None), ArticleRow.id > after)
    if since is not None:
        query = query.where(ArticleRow.received_at >= since)
    if source is not None:
        query = query.where(ArticleRow.source == source)
    return query


def count_unclassified(
    engine: Engine, version: str, since: datetime | None = None, source: str | None = None
) -> int:
    query = _without_prediction_of(
        select(func.count()).select_from(ArticleRow), version, since, source
    )
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def unclassified_page(
    engine: Engine,
    version: str,
    *,
    after: str,
    limit: int,
    since: datetime | None = None,
    source: str | None = None,
) -> list[dict[str, Any]]:
    """The next `limit` articles by id after `after` that `version` has not classified, as
    articles of the message contract (id, title, content, source). Paging by id, not by
    offset: a page costs the same at the millionth article as at the first."""
    columns = select(ArticleRow.id, ArticleRow.title, ArticleRow.content, ArticleRow.source)
    query = _without_prediction_of(columns, version, since, source, after)
    query = query.order_by(ArticleRow.id).limit(limit)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]
