"""The Alembic chain matches the typed models, and the results view prefers the promoted model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, select, text, update

from db.models import ArticleRow, Base, ModelVersion, Prediction
from db.queries import latest_labels
from db.store import ArticleRecord, PredictionRecord, ResultStore


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_view_shows_one_row_per_article_preferring_the_promoted_version(engine: Engine) -> None:
    store = ResultStore(engine)
    for version in ("v1", "v2"):
        store.register_model_version(version, f"/models/{version}")
    article = [ArticleRecord("a1", "标题", None, None)]
    store.write_batch(article, [PredictionRecord("a1", 0, "finance", 0.9, [0.9, 0.1])], "v1")
    store.write_batch(article, [PredictionRecord("a1", 1, "realty", 0.8, [0.2, 0.8])], "v2")
    # No promoted model: the newest prediction wins.
    assert latest_labels(engine, ["a1"]) == {"a1": "realty"}

    with engine.begin() as conn:
        promoted = datetime.now(UTC) - timedelta(minutes=1)
        conn.execute(
            update(ModelVersion).where(ModelVersion.version == "v1").values(promoted_at=promoted)
        )
    assert latest_labels(engine, ["a1"]) == {"a1": "finance"}
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT article_id, title, model_version FROM latest_predictions"))
        assert rows.all() == [("a1", "标题", "v1")]


def test_writing_the_same_batch_twice_upserts(engine: Engine) -> None:
    store = ResultStore(engine)
    store.register_model_version("v1", "/m")
    store.register_model_version("v1", "/m")  # idempotent too
    articles = [ArticleRecord("x", "t", None, None), ArticleRecord("x", "t2", None, None)]
    predictions = [PredictionRecord("x", 0, "finance", 0.5, [0.5, 0.5])] * 2
    store.write_batch(articles, predictions, "v1")
    store.write_batch(articles, predictions, "v1")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM predictions")).scalar_one() == 1
        assert conn.execute(text("SELECT title FROM articles")).scalar_one() == "t2"
    store.write_batch(
        [ArticleRecord("x", "t3", "正文 'q' \t\\n", "src")],
        [PredictionRecord("x", 1, "realty", 0.7, [0.3, 0.7])],
        "v1",
    )
    with engine.connect() as conn:
        row = conn.execute(select(Prediction.label, Prediction.score, Prediction.probs)).one()
        assert tuple(row) == ("realty", 0.7, [0.3, 0.7])
        text_row = conn.execute(select(ArticleRow.title, ArticleRow.content, ArticleRow.source))
        assert tuple(text_row.one()) == ("t3", "正文 'q' \t\\n", "src")
