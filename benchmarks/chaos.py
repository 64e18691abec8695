"""Chaos run: classify N articles while a worker is SIGKILLed K times at random points of
the run and started again; then count what SQL holds for the model version: lost and
duplicated articles.

    .venv/bin/python -m benchmarks.chaos --articles 100000 --kills 20      # README's figures
    (tests/test_reliability.py runs the same function with 5,000 articles and 5 kills)

Needs Redis and PostgreSQL on localhost (own Redis db index 15, own schema). Writes
benchmarks/results/chaos.json.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import redis
from sqlalchemy import Engine, func, select

from db.engine import make_engine
from db.models import Prediction, Reject
from producer.client import NewsClient
from worker.launcher import WorkerProcess

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ChaosResult:
    articles: int
    kills: int
    kills_with_work_left: int
    committed_at_kills: list[int]
    lost: int
    duplicated: int
    rejected: int
    redelivered_messages: int
    seconds: float


def committed(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Prediction)).scalar_one())


def settled(engine: Engine) -> int:
    """Articles with a prediction or a reject: the run is over when every one has either."""
    with engine.connect() as conn:
        rejected = conn.execute(select(func.count()).select_from(Reject)).scalar_one()
    return committed(engine) + int(rejected)


def kill_points(total: int, kills: int, rng: random.Random) -> list[int]:
    """Committed-row counts at which to kill: one in each of `kills` equal slices of the first
    kills/(kills+1) of the run, jittered within its slice. Tying kills to progress instead of
    to wall time keeps every kill inside the run on a fast machine and a slow one alike (a
    timed schedule once killed a worker after the last commit on a faster CI machine)."""
    slice_ = total / (kills + 1)
    return [int(slice_ * (i + rng.uniform(0.2, 0.8))) for i in range(kills)]


def run_chaos(
    start: Callable[[], WorkerProcess],
    redis_url: str,
    engine: Engine,
    articles: list[tuple[str, str]],
    *,
    kills: int,
    chunk_size: int = 256,
    seed: int = 0,
    timeout: float = 1800,
) -> ChaosResult:
    """Enqueue `articles`, then `kills` times: wait until the commits reach the next kill point
    and the current worker has committed something itself, SIGKILL it (whatever it holds
    unacked or half-batched at that moment), start a new one. Finally wait until nothing is
    left to do."""
    rng = random.Random(seed)
    started = time.monotonic()
    deadline = started + timeout
    with NewsClient(redis_url) as client:
        client.enqueue(articles, chunk_size=chunk_size)
    worker = start()
    at_kills = []
    for point in kill_points(len(articles), kills, rng):
        at_start = committed(engine)
        while committed(engine) < max(point, at_start + 1) and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.01, 0.05))
        worker.kill()
        at_kills.append(committed(engine))
        worker = start()
    client_redis = redis.Redis.from_url(redis_url)
    while settled(engine) < len(articles) and time.monotonic() < deadline:
        time.sleep(0.5)
    worker.stop()
    with engine.connect() as conn:
        rows = conn.execute(select(Prediction.article_id, Prediction.model_version)).all()
        rejected = int(conn.execute(select(func.count()).select_from(Reject)).scalar_one())
    distinct = {article_id for article_id, _ in rows}
    return ChaosResult(
        articles=len(articles),
        kills=kills,
        kills_with_work_left=sum(1 for n in at_kills if n < len(articles)),
        committed_at_kills=at_kills,
        lost=len({a for a, _ in articles} - distinct),
        duplicated=len(rows) - len(distinct),
        rejected=rejected,
        redelivered_messages=len(list(client_redis.scan_iter("newsq:redeliveries:*"))),
        seconds=round(time.monotonic() - started, 1),
    )


def main() -> None:
    from benchmarks.pipeline import database, make_model, read_titles

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--model", default="small", help="small or null")
    parser.add_argument("--visibility-timeout", type=int, default=60)
    parser.add_argument(
        "--max-deliveries",
        type=int,
        default=5,
        help="NEWSQ_MAX_DELIVERIES (the worker's default): a worker here holds 64 x 256 articles"
        " and is killed every ~5,000, so a message is held by many dying workers; a death counts"
        " only against the suspect classified alone at the time (README, Reliability)",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/chaos.json")
    args = parser.parse_args()
    redis.Redis.from_url(args.redis_url).flushdb()
    titles = read_titles(args.articles)
    articles = [(f"chaos-{i}", title) for i, title in enumerate(titles)]
    with (
        tempfile.TemporaryDirectory() as tmp,
        database("postgresql", Path(tmp), args.pg_url) as url,
    ):
        env = {
            "NEWSQ_DATABASE_URL": url,
            "NEWSQ_MODEL_DIR": make_model(args.model, Path(tmp)),
            "NEWSQ_VISIBILITY_TIMEOUT": str(args.visibility_timeout),
            "NEWSQ_MAX_DELIVERIES": str(args.max_deliveries),
            "NEWSQ_METRICS_PORT": "0",
        }

        def start() -> WorkerProcess:
            name = f"chaos-{uuid.uuid4().hex[:6]}"
            log = Path(tmp) / "workers.log"
            return WorkerProcess(args.redis_url, env, name=name, log_path=log).start()

        engine = make_engine(url)
        result = run_chaos(
            start,
            args.redis_url,
            engine,
            articles,
            kills=args.kills,
        )
        engine.dispose()
    summary = {
        **asdict(result),
        "model": args.model,
        "visibility_timeout": args.visibility_timeout,
        "max_deliveries": args.max_deliveries,
    }
    print(json.dumps(summary, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
