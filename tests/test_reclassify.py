"""`newsq reclassify`: stored articles back through the queue for the promoted model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from db import registry
from db.models import ArticleRow, ModelVersion, Prediction
from db.queries import latest_rows
from producer import reclassify
from producer.client import NewsClient
from producer.contract import CLASSIFY_QUEUE, priority_lists
from tests.conftest import TOKENIZER_DIR, WorkerFactory, run_cli
from tests.helpers import message_ids, titles, wait_until
from worker.model_shapes import init_model

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def prediction(key: str, version: str, at: datetime) -> Prediction:
    return Prediction(
        article_id=key,
        model_version=version,
        label_id=0,
        label="finance",
        score=0.5,
        probs=[0.1] * 10,
        created_at=at,
    )


def store(engine: Engine, articles: dict[str, tuple[str | None, datetime]], version: str) -> None:
    """Articles by id with their source and arrival, each with a prediction of `version`."""
    with Session(engine) as session, session.begin():
        session.add(ModelVersion(version=version, path="-"))
        session.add_all(
            ArticleRow(id=key, title=f"标题 {key}", source=source, received_at=at)
            for key, (source, at) in articles.items()
        )
        session.flush()
        session.add_all(prediction(key, version, at) for key, (_, at) in articles.items())


def queued_ids(redis_url: str, lists: list[str] | None = None) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    return [
        i
        for name in lists or priority_lists(CLASSIFY_QUEUE)
        for raw in reversed(client.lrange(name, 0, -1))  # LPUSH: the oldest is last
        for i in message_ids(raw)
    ]


def test_only_articles_the_version_lacks_are_sent_page_by_page(
    engine: Engine, clean_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = {f"a{i}": ("xinhua" if i % 2 else None, NOW - timedelta(days=i)) for i in range(7)}
    store(engine, old, "v1")
    with Session(engine) as session, session.begin():  # a{0,1} already have v2's prediction
        session.add(ModelVersion(version="v2", path="-"))
        session.flush()
        session.add_all(prediction(key, "v2", NOW) for key in ("a0", "a1"))
    everything = reclassify.Selection("v2")
    recent = reclassify.Selection("v2", since=NOW - timedelta(days=3))
    xinhua = reclassify.Selection("v2", source="xinhua")
    assert reclassify.pending(engine, everything) == 5
    assert reclassify.pending(engine, recent) == 2  # a2, a3
    assert reclassify.pending(engine, xinhua) == 2  # a3, a5 (a1 has v2's)

    monkeypatch.setattr(reclassify, "PAGE", 2)  # three pages of 2, 2 and 1
    pages: list[int] = []
    with NewsClient(clean_redis) as client:
        sent = reclassify.send(
            client, engine, everything, chunk_size=1, priority=9, on_sent=pages.append
        )
    assert sent == 5 and pages == [2, 2, 1]
    last = priority_lists(CLASSIFY_QUEUE)[-1:]  # behind live traffic
    assert (
        queued_ids(clean_redis, last) == queued_ids(clean_redis) == ["a2", "a3", "a4", "a5", "a6"]
    )


def test_reclassify_gives_every_stored_article_the_promoted_models_label(
    start_worker: WorkerFactory,
    engine: Engine,
    database_url: str,
    clean_redis: str,
    tmp_path: Path,
) -> None:
    start_worker(reload_interval_s=0.5)
    articles = titles(300, "rc")
    ids = [a[0] for a in articles]
    with NewsClient(clean_redis, database_url=database_url) as client:
        client.enqueue(articles, chunk_size=50)
        first = client.wait(ids, timeout=120)
    (served,) = {row["model_version"] for row in first.values()}

    env = {"NEWSQ_DATABASE_URL": database_url, "NEWSQ_BROKER_URL": clean_redis}
    nothing = run_cli("reclassify", env=env)
    assert nothing.returncode == 1 and "no model version is promoted" in nothing.stderr

    version = init_model("small", tmp_path / "next", TOKENIZER_DIR, seed=1)
    registry.register_version(engine, version, str(tmp_path / "next"), {}, None)
    registry.promote(engine, version)
    counted = run_cli("reclassify", "--dry-run", env=env)
    assert counted.returncode == 0, counted.stderr
    assert f"300 stored articles have no prediction of the promoted {version}" in counted.stderr
    assert queued_ids(clean_redis) == []  # counted, not sent

    done = run_cli("reclassify", "--chunk-size", "64", "--wait", "60", env=env)
    assert done.returncode == 0, done.stderr
    assert f"sent 300 articles for {version}" in done.stderr

    def relabelled() -> bool:
        return {r["model_version"] for r in latest_rows(engine, ids).values()} == {version}

    wait_until(relabelled, timeout=120)
    with engine.connect() as conn:  # the old model's predictions stay beside the new ones
        per_version = dict(
            conn.execute(
                select(Prediction.model_version, func.count()).group_by(Prediction.model_version)
            ).all()
        )
    assert per_version == {served: 300, version: 300}
    again = run_cli("reclassify", env=env)
    assert again.returncode == 0 and "0 stored articles" in again.stderr
