"""Benchmark of `newsq reclassify`'s producer side: stored articles read and enqueued per second.

A table of N articles, each with a prediction of an old version and half of them one of the
promoted version too, so that half are to send. Measured in one run, on each database, against
a baseline: one plain read of every article in id order (the floor of any reader). Then the
selection alone (pages of the anti-join) and the selection sent through `NewsClient` into a
Redis db of its own (no worker: what the producer side adds before the workers' own rate).
Writes a markdown table to stdout and JSON to benchmarks/results/reclassify.json.

    .venv/bin/python -m benchmarks.reclassify --articles 200000 \\
        [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--redis redis://127.0.0.1:6379/14]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import redis
from sqlalchemy import Engine, select, text

from db.engine import make_engine
from db.migrate import upgrade
from db.models import ArticleRow
from producer import reclassify
from producer.client import NewsClient

ROOT = Path(__file__).resolve().parents[1]
TITLES = ROOT.parent / "shared/data/thucnews/train.txt"


@contextmanager
def database(kind: str, pg_url: str) -> Iterator[str]:
    """A migrated, empty database: a SQLite file, or a PostgreSQL schema dropped afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite:///{folder}/bench.db"
            upgrade(url)
            yield url
        return
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        url = f"{pg_url}?options=-csearch_path%3D{schema}"
        upgrade(url)
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def fill(engine: Engine, count: int) -> None:
    titles = [line.split("\t", 1)[0] for line in TITLES.read_text(encoding="utf-8").splitlines()]
    now = datetime.now(UTC)
    rows = [
        {"id": f"bench-{i:09d}", "title": titles[i % len(titles)], "source": "thucnews", "t": now}
        for i in range(count)
    ]
    prediction = (
        "INSERT INTO predictions(article_id, model_version, label_id, label, score, probs,"
        " created_at) VALUES (:id, :version, 0, 'finance', 0.5, '[0.1]', :t)"
    )
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO model_versions(version, path, created_at) VALUES (:v, '-', :t)"),
            [{"v": "old", "t": now}, {"v": "new", "t": now}],
        )
        conn.execute(
            text(
                "INSERT INTO articles(id, title, source, received_at)"
                " VALUES (:id, :title, :source, :t)"
            ),
            rows,
        )
        conn.execute(text(prediction), [{**r, "version": "old"} for r in rows])
        conn.execute(text(prediction), [{**r, "version": "new"} for r in rows[::2]])
    # The statistics autovacuum keeps. A fresh table has none, and PostgreSQL's plan without
    # them took 100 ms for the first page of 4,096 here, less for each page after (20 ms with).
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))


def timed(work: Callable[[], int]) -> tuple[int, float]:
    started = time.perf_counter()
    count = work()
    return count, time.perf_counter() - started


def plain_read(engine: Engine) -> int:
    columns = select(ArticleRow.id, ArticleRow.title, ArticleRow.content, ArticleRow.source)
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=reclassify.PAGE).execute(
            columns.order_by(ArticleRow.id)
        )
        return sum(len(part) for part in result.partitions())


def selection_only(engine: Engine, selection: reclassify.Selection) -> int:
    return sum(len(page) for page in reclassify.pages(engine, selection))


def main() -> None:
    parser = argparse.ArgumentParser(description="newsq reclassify's producer side")
    parser.add_argument("--articles", type=int, default=200_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--output", default=str(ROOT / "benchmarks/results/reclassify.json"))
    args = parser.parse_args()
    selection = reclassify.Selection("new")
    results = []
    for kind in args.databases.split(","):
        with database(kind, args.pg_url) as url:
            engine = make_engine(url)
            fill(engine, args.articles)
            redis.Redis.from_url(args.redis).flushdb()
            read, base_s = timed(partial(plain_read, engine))
            chosen, select_s = timed(partial(selection_only, engine, selection))
            with NewsClient(args.redis) as client:
                sent, send_s = timed(
                    partial(reclassify.send, client, engine, selection, chunk_size=512)
                )
            redis.Redis.from_url(args.redis).flushdb()
            engine.dispose()
        base = read / base_s
        for case, count, seconds in (
            ("plain read of every article (baseline)", read, base_s),
            ("selection: pages of the anti-join", chosen, select_s),
            ("selection + enqueue (reclassify.send)", sent, send_s),
        ):
            # The selection reads all N rows to return N/2: its rate counts the rows it returns.
            results.append(
                {
                    "database": kind,
                    "case": case,
                    "articles": count,
                    "seconds": round(seconds, 3),
                    "per_s": round(count / seconds),
                    "of_baseline": round(count / seconds / base, 2),
                }
            )
    print(f"{args.articles:,} stored articles, half with a prediction of the promoted version\n")
    print("| database | case | articles | articles/s | of baseline |\n|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['database']} | {r['case']} | {r['articles']:,} | {r['per_s']:,} |"
            f" {r['of_baseline']} |"
        )
    Path(args.output).write_text(json.dumps({"articles": args.articles, "results": results}))


if __name__ == "__main__":
    main()
