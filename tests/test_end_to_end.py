"""The whole path on real services: Redis, a real worker process, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import pickle
import time
import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, func, select

from db.models import Prediction
from db.queries import committed_count
from producer.client import NewsClient, celery_client
from producer.contract import CLASSIFY_QUEUE, CLASSIFY_TASK
from tests.conftest import WorkerFactory
from tests.helpers import prediction_rows, publish_raw, rejects_of, titles, wait_until
from worker.train_data import THUCNEWS_LABELS


def test_thousand_articles_give_exactly_a_thousand_rows_and_resending_adds_none(
    start_worker: WorkerFactory, engine: Engine, clean_redis: str
) -> None:
    start_worker()
    articles = titles(1000, "e2e")
    ids = [a[0] for a in articles]
    with NewsClient(clean_redis) as client:
        assert client.enqueue(articles) == ids
        wait_until(lambda: committed_count(engine, ids) == 1000)
        rows = prediction_rows(engine, ids)
        assert len(rows) == 1000
        for row in rows:
            assert row.label in THUCNEWS_LABELS
            assert THUCNEWS_LABELS[row.label_id] == row.label
            assert len(row.probs) == 10
            assert abs(sum(row.probs) - 1) < 1e-3
            assert row.score == max(row.probs) or abs(row.score - max(row.probs)) < 1e-5

        first_written = max(r.created_at for r in rows)
        client.enqueue(articles)
        # The resend is upserted: every row is rewritten, none is added.
        wait_until(lambda: committed_count(engine, ids, since=first_written) == 1000)
    with engine.connect() as conn:
        versions = conn.execute(
            select(Prediction.model_version, func.count())
            .where(Prediction.article_id.in_(ids))
            .group_by(Prediction.model_version)
        ).all()
    assert len(versions) == 1 and versions[0][1] == 1000


def test_mixed_message_stores_good_rows_rejects_bad_and_worker_keeps_serving(
    start_worker: WorkerFactory, engine: Engine, clean_redis: str
) -> None:
    worker = start_worker()
    app = celery_client(clean_redis)
    mixed = [
        {"id": "good-1", "title": "央行宣布降准"},
        {"id": "bad-no-title", "content": "正文"},
        {"id": "bad-empty", "title": "  "},
        {"id": "bad-type", "title": 12345},
        {"id": "bad-field", "title": "标题", "url": "http://x"},
        {"id": "long", "title": "长" * 3000, "content": "文" * 200_000},
        {"id": "good-2", "title": "湖人队赢得比赛", "source": "wire"},
    ]
    message_id = app.send_task(CLASSIFY_TASK, kwargs={"articles": mixed}, queue=CLASSIFY_QUEUE).id
    wait_until(lambda: committed_count(engine, ["good-1", "good-2", "long"]) == 3)
    wait_until(lambda: len(rejects_of(engine, message_id)) == 4)
    reasons = {r.article_id: r.reason for r in rejects_of(engine, message_id)}
    assert "required" in reasons["bad-no-title"]
    assert "title is empty" in reasons["bad-empty"]
    assert "valid string" in reasons["bad-type"]
    assert "url" in reasons["bad-field"] and "Extra inputs" in reasons["bad-field"]
    payload = json.loads(rejects_of(engine, message_id)[0].payload)
    assert payload == mixed[1]

    # A message that is not the schema at all: one reject for the whole message.
    wrong = app.send_task(CLASSIFY_TASK, kwargs={"items": ["x"]}, queue=CLASSIFY_QUEUE).id
    wait_until(lambda: len(rejects_of(engine, wrong)) == 1)
    assert "schema" in rejects_of(engine, wrong)[0].reason

    assert worker.alive
    with NewsClient(clean_redis) as client:
        client.enqueue([("after-bad", "下一条新闻照常分类", None)])
    wait_until(lambda: committed_count(engine, ["after-bad"]) == 1)
    app.close()


class SideEffect:
    """Unpickling this would create a file: proof that a pickle was never loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_pickled_and_non_json_messages_are_refused_and_recorded(
    start_worker: WorkerFactory, engine: Engine, clean_redis: str, tmp_path: Path
) -> None:
    worker = start_worker()
    marker = tmp_path / "unpickled"
    pickled_id, garbage_id = str(uuid.uuid4()), str(uuid.uuid4())
    body = pickle.dumps(((), {"articles": [SideEffect(marker)]}, {}))
    publish_raw(clean_redis, body, "application/x-python-serialize", pickled_id)
    publish_raw(clean_redis, b'{"articles": [not json', "application/json", garbage_id)

    wait_until(lambda: len(rejects_of(engine, pickled_id)) == 1)
    wait_until(lambda: len(rejects_of(engine, garbage_id)) == 1)
    assert "pickle" in rejects_of(engine, pickled_id)[0].reason
    assert "could not be decoded" in rejects_of(engine, garbage_id)[0].reason
    assert "[not json" in rejects_of(engine, garbage_id)[0].payload
    assert not marker.exists()
    assert worker.alive
    time.sleep(1)  # refused once, not redelivered: still exactly one row each
    assert len(rejects_of(engine, pickled_id)) == len(rejects_of(engine, garbage_id)) == 1


def test_sigkill_mid_run_loses_nothing_and_duplicates_nothing(
    start_worker: WorkerFactory, engine: Engine, clean_redis: str
) -> None:
    # A short visibility timeout so the restarted worker gets the dead one's messages back soon.
    worker = start_worker(visibility_timeout=8)
    articles = titles(5000, "kill")
    ids = [a[0] for a in articles]
    with NewsClient(clean_redis) as client:
        client.enqueue(articles, chunk_size=50)
    wait_until(lambda: committed_count(engine, ids) >= 500, timeout=120)
    worker.kill()
    at_kill = committed_count(engine, ids)
    assert at_kill < 5000, "the run finished before the kill; nothing was tested"

    start_worker(visibility_timeout=8)
    wait_until(lambda: committed_count(engine, ids) == 5000, timeout=240)
    rows = prediction_rows(engine, ids)
    assert len(rows) == 5000
    assert len({r.article_id for r in rows}) == 5000


def test_a_worker_holds_messages_by_their_articles_not_by_its_threads(
    start_worker: WorkerFactory, engine: Engine, clean_redis: str
) -> None:
    """Two task threads, and windows that may wait 2 s for company: when each message held a
    thread until its rows were committed, two messages were in hand at a time."""
    start_worker(concurrency=2, articles_in_hand=64, max_wait_ms=2000)
    articles = titles(300, "hand")
    ids = [a[0] for a in articles]
    with NewsClient(clean_redis) as client:
        client.enqueue(articles, chunk_size=1)
    broker = redis.Redis.from_url(clean_redis)
    held, deadline = 0, time.monotonic() + 120
    while committed_count(engine, ids) < len(ids) and time.monotonic() < deadline:
        held = max(held, broker.hlen("unacked"))
        time.sleep(0.02)
    assert committed_count(engine, ids) == len(ids)
    assert held >= 16, held  # the credit grew with one-article messages (64 at most)
    wait_until(lambda: broker.hlen("unacked") == 0, timeout=10)  # each acked once committed


def test_client_waits_for_and_reads_results(
    start_worker: WorkerFactory, clean_redis: str, database_url: str
) -> None:
    start_worker()
    with NewsClient(clean_redis, database_url=database_url) as client:
        ids = client.enqueue(titles(20, "client"))
        results = client.wait(ids, timeout=60)
        assert set(results) == set(ids)
        row = results[ids[0]]
        assert row["label"] in THUCNEWS_LABELS and len(row["probs"]) == 10
        assert row["title"] == titles(1, "client")[0][1]
        assert client.results(["never-sent"]) == {}
        with pytest.raises(TimeoutError, match="1 of 1 articles not classified"):
            client.wait(["never-sent"], timeout=0.5, poll=0.1)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_live_articles_overtake_a_bulk_job_the_worker_already_holds(
    start_worker: WorkerFactory, clean_redis: str, engine: Engine
) -> None:
    """Priority 0 before 9 among the messages in hand too, not only when they are fetched."""
    # 120 of the bulk job's messages in hand; windows of ~450 articles (2 budgets of 4,096
    # tokens instead of the CPU's 16), so that most of what is held waits in the inbox
    start_worker(articles_in_hand=6000, window_budgets=2)
    bulk, live = titles(8000, "bulk"), titles(10, "live")
    with NewsClient(clean_redis) as client:
        client.enqueue(bulk, chunk_size=50, priority=9)
        wait_until(lambda: committed_count(engine, [a[0] for a in bulk]) >= 200)
        client.enqueue(live, priority=0)
    ids = [a[0] for a in bulk + live]
    wait_until(lambda: committed_count(engine, ids) == 8010, timeout=180)
    with engine.connect() as conn:
        live_done = conn.execute(
            select(func.max(Prediction.created_at)).where(Prediction.article_id.like("live-%"))
        ).scalar_one()
        bulk_after = conn.execute(
            select(func.count()).where(
                Prediction.article_id.like("bulk-%"), Prediction.created_at > live_done
            )
        ).scalar_one()
    # Taken in the order they came, the live articles waited behind the bulk ones in hand, and
    # only those still in Redis then (fetched after them) came later: 2,573 here. Ahead of the
    # held ones, they wait only for the windows already taken (~450 articles each): 5,150-5,300.
    assert bulk_after > 4000, bulk_after
