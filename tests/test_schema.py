"""The Alembic chain matches the typed models, and the results view prefers the promoted model."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import QueuePool

from db.engine import make_engine
from db.migrate import alembic_config
from db.models import ArticleRow, Base, ModelVersion, Prediction
from db.queries import latest_labels
from db.store import ResultColumns, ResultStore


def results(
    ids: list[str],
    titles: list[str],
    label_ids: list[int],
    labels: list[str],
    probs: list[list[float]],
    contents: list[str | None] | None = None,
    sources: list[str | None] | None = None,
) -> ResultColumns:
    return ResultColumns(
        ids=ids,
        titles=titles,
        contents=contents or [None] * len(ids),
        sources=sources or [None] * len(ids),
        label_ids=label_ids,
        labels=labels,
        scores=[max(row) for row in probs],
        probs=np.array(probs, dtype=np.float32),
    )


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def migrate(url: str, revision: str, *, down: bool = False) -> None:
    engine = make_engine(url)
    with engine.begin() as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)
    engine.dispose()


def orphan_prediction(engine: Engine) -> None:
    """A prediction of an article and a version that were never stored."""
    with engine.begin() as conn:
        conn.execute(
            insert(Prediction).values(
                article_id="nowhere",
                model_version="none",
                label_id=0,
                label="finance",
                score=1.0,
                probs=[1.0],
                created_at=datetime.now(UTC),
            )
        )


def test_predictions_lose_their_foreign_keys_and_get_them_back_keeping_rows_and_view(
    database_url: str, engine: Engine
) -> None:
    """Migration 0003 both ways, on a database with rows: the rows and the view survive each
    step, and only the step down refuses a prediction of an unknown article."""
    store = ResultStore(engine)
    store.register_model_version("v1", "/m")
    store.write_batch(results(["a1"], ["标题"], [0], ["finance"], [[0.9, 0.1]]), "v1")
    orphan_prediction(engine)  # head: no foreign keys
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM predictions WHERE article_id = 'nowhere'"))
    engine.dispose()

    migrate(database_url, "0002", down=True)
    with pytest.raises(IntegrityError):
        orphan_prediction(engine)
    assert latest_labels(engine, ["a1"]) == {"a1": "finance"}
    engine.dispose()

    migrate(database_url, "head")
    orphan_prediction(engine)
    assert latest_labels(engine, ["a1"]) == {"a1": "finance"}
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_view_shows_one_row_per_article_preferring_the_promoted_version(engine: Engine) -> None:
    store = ResultStore(engine)
    for version in ("v1", "v2"):
        store.register_model_version(version, f"/models/{version}")
    store.write_batch(results(["a1"], ["标题"], [0], ["finance"], [[0.9, 0.1]]), "v1")
    store.write_batch(results(["a1"], ["标题"], [1], ["realty"], [[0.2, 0.8]]), "v2")
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


def test_warm_up_readies_a_connection_per_writer_and_writes_nothing(engine: Engine) -> None:
    store = ResultStore(engine)
    store.warm_up(2)
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    assert pool.checkedin() == 2  # kept in the pool for the two writers
    with engine.connect() as first, engine.connect() as second:
        for conn in (first, second):
            assert conn.execute(text("SELECT count(*) FROM articles")).scalar_one() == 0
            assert conn.execute(text("SELECT count(*) FROM predictions")).scalar_one() == 0
            if engine.dialect.name == "postgresql":  # each has its staging table
                stage = text("SELECT to_regclass('pg_temp.newsq_stage_results')")
                assert conn.execute(stage).scalar_one() is not None
    assert pool.checkedin() == 2  # those two: none was opened for the reads
    store.register_model_version("v1", "/m")
    store.write_batch(results(["a"], ["标题"], [0], ["finance"], [[0.9, 0.1]]), "v1")
    with engine.connect() as conn:
        assert conn.execute(select(Prediction.article_id)).scalars().all() == ["a"]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_warm_up_gives_way_to_a_locked_table(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    store = ResultStore(engine)
    store.register_model_version("v1", "/m")
    with engine.connect() as locker, locker.begin():  # e.g. a migration in progress
        locker.execute(text("LOCK TABLE predictions IN EXCLUSIVE MODE"))
        store.warm_up(2)  # returns after the lock timeout instead of waiting for the lock
    assert "writers start cold" in caplog.text
    store.write_batch(results(["a"], ["标题"], [0], ["finance"], [[0.9, 0.1]]), "v1")
    with engine.connect() as conn:
        assert conn.execute(select(Prediction.article_id)).scalars().all() == ["a"]


def test_writing_the_same_batch_twice_upserts(engine: Engine) -> None:
    store = ResultStore(engine)
    store.register_model_version("v1", "/m")
    store.register_model_version("v1", "/m")  # idempotent too
    twice = results(["x", "x"], ["t", "t2"], [0, 0], ["finance"] * 2, [[0.5, 0.5]] * 2)
    store.write_batch(twice, "v1")
    store.write_batch(twice, "v1")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM predictions")).scalar_one() == 1
        assert conn.execute(text("SELECT title FROM articles")).scalar_one() == "t2"
    store.write_batch(
        results(
            ["x"],
            ["t3"],
            [1],
            ["realty"],
            [[0.3, 0.7]],
            contents=["正文 'q' \t\\n"],
            sources=["src"],
        ),
        "v1",
    )
    with engine.connect() as conn:
        row = conn.execute(select(Prediction.label, Prediction.score, Prediction.probs)).one()
        assert tuple(row) == ("realty", 0.7, [0.3, 0.7])
        text_row = conn.execute(select(ArticleRow.title, ArticleRow.content, ArticleRow.source))
        assert tuple(text_row.one()) == ("t3", "正文 'q' \t\\n", "src")


def test_writers_of_the_same_articles_at_once_neither_deadlock_nor_duplicate(
    engine: Engine,
) -> None:
    """Two writers (a worker's write threads, or two workers) upserting the same articles, listed
    in opposite orders. Each transaction locks its rows in id order, so neither holds one row
    while it waits for the other's: without that, PostgreSQL found a deadlock and failed one."""
    store = ResultStore(engine)
    store.register_model_version("v1", "/m")
    ids = [f"a{i:03d}" for i in range(300)]
    errors: list[Exception] = []

    def write(order: list[str]) -> None:
        batch = results(order, order, [0] * len(order), ["finance"] * len(order), [[1.0]] * 300)
        try:
            for _ in range(10):
                store.write_batch(batch, "v1")
        except Exception as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(order,)) for order in (ids, ids[::-1])]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert errors == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM predictions")).scalar_one() == 300
        assert conn.execute(text("SELECT count(*) FROM articles")).scalar_one() == 300


def test_text_survives_the_bulk_write_as_sent(engine: Engine) -> None:
    """COPY's text format gives backslash, tab, newline and CR a meaning, and \\N means NULL:
    each must come back exactly as sent, in columns with and without NULLs."""
    store = ResultStore(engine)
    store.register_model_version("v1", "/m")
    tricky = ["\\N", "a\tb", "line\nbreak", "cr\rhere", "back\\slash", "\\t literal", "普通"]
    n = len(tricky)
    contents: list[str | None] = [None if i % 2 else text for i, text in enumerate(tricky)]
    store.write_batch(
        results(
            [f"id\t{i}" for i in range(n)],
            tricky,
            [0] * n,
            ["finance"] * n,
            [[0.25, 0.75]] * n,
            contents=contents,
            sources=list(reversed(tricky)),
        ),
        "v1",
    )
    with engine.connect() as conn:
        rows = conn.execute(
            select(ArticleRow.id, ArticleRow.title, ArticleRow.content, ArticleRow.source)
        ).all()
        probs = conn.execute(select(Prediction.probs)).scalars().all()
    assert sorted(rows) == sorted(
        zip([f"id\t{i}" for i in range(n)], tricky, contents, reversed(tricky), strict=True)
    )
    assert probs == [[0.25, 0.75]] * n


def test_each_row_carries_the_version_and_the_time_of_its_write(engine: Engine) -> None:
    store = ResultStore(engine)
    store.register_model_version("v1", "/m")
    before = datetime.now(UTC)
    store.write_batch(
        results(["a", "b"], ["t1", "t2"], [0, 1], ["finance", "realty"], [[1.0]] * 2), "v1"
    )
    after = datetime.now(UTC)
    with engine.connect() as conn:
        rows = conn.execute(
            select(Prediction.article_id, Prediction.model_version, Prediction.created_at)
        ).all()
        received = conn.execute(select(ArticleRow.received_at)).scalars().all()
    assert sorted(r[:2] for r in rows) == [("a", "v1"), ("b", "v1")]
    moments = {as_utc(r.created_at) for r in rows} | {as_utc(t) for t in received}
    assert len(moments) == 1 and before <= moments.pop() <= after


def as_utc(moment: datetime) -> datetime:
    """SQLite keeps no time zone: its datetimes come back naive, in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
