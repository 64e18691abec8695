"""Training through the queue, early stopping, the registry, and promotion to running workers."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from db import registry
from db.models import Prediction
from db.queries import committed_count
from producer.client import NewsClient
from tests.conftest import TOKENIZER_DIR, WorkerFactory, run_cli
from tests.helpers import titles, wait_until
from worker.model_shapes import init_model

THUCNEWS = TOKENIZER_DIR.parent / "thucnews"
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def sample(name: str, rows: int, path: Path, shuffle_labels: bool = False) -> str:
    lines = (THUCNEWS / name).read_text(encoding="utf-8").splitlines()[:rows]
    if shuffle_labels:  # a dev set the model cannot learn: its loss only rises
        rng = random.Random(0)
        lines = [f"{line.rsplit(chr(9), 1)[0]}\t{rng.randrange(10)}" for line in lines]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def wait_for_run(engine: Engine, run_id: int, timeout: float = 600) -> dict[str, object]:
    wait_until(
        lambda: (registry.get_run(engine, run_id) or {}).get("status") in ("finished", "failed"),
        timeout=timeout,
    )
    run = registry.get_run(engine, run_id)
    assert run is not None and run["status"] == "finished", run and run["error"]
    return run


def test_train_through_the_queue_registers_a_version_with_a_report(
    start_worker: WorkerFactory,
    engine: Engine,
    clean_redis: str,
    database_url: str,
    tmp_path: Path,
    small_model: Path,
) -> None:
    worker = start_worker(queues="newsq.train", concurrency=1)
    with NewsClient(clean_redis, database_url=database_url) as client:
        run_id = client.train(
            base_model=str(small_model),  # the from_pretrained path, as with hub weights
            train_file=sample("train.txt", 400, tmp_path / "train.txt"),
            dev_file=sample("dev.txt", 100, tmp_path / "dev.txt"),
            test_file=sample("test.txt", 100, tmp_path / "test.txt"),
            tokenizer=str(TOKENIZER_DIR),
            output_dir=str(tmp_path / "runs"),
            epochs=2,
            eval_steps=5,
            batch_size=32,
            promote_if_better=True,
        )
    run = wait_for_run(engine, run_id)
    metrics = run["metrics"]
    assert isinstance(metrics, dict)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and len(metrics["per_class"]) == 10
    matrix = run["confusion_matrix"]
    assert isinstance(matrix, list) and len(matrix) == 10
    assert sum(map(sum, matrix)) == 100
    assert run["best_step"] is not None and isinstance(run["progress"], dict)
    folder = Path(str(run["output_dir"]))
    for name in ("confusion_matrix.png", "loss_curves.png", "model/config.json"):
        assert (folder / name).exists(), name
    assert list((folder / "checkpoints").glob("runs/*/events.out.tfevents.*"))
    (version,) = [v for v in registry.versions(engine) if v["run_id"] == run_id]
    assert version["promoted_at"] is not None  # nothing was promoted before: "better"
    # A warning of the training stack would repeat in the log of every run (e.g. pinned memory
    # asked for without a GPU).
    assert worker.log_path is not None and "UserWarning" not in worker.log_path.read_text()

    env = {"NEWSQ_DATABASE_URL": database_url, "COLUMNS": "200"}
    report = run_cli("report", str(run_id), env=env)
    assert report.returncode == 0, report.stderr
    assert "test accuracy" in report.stdout and "sports" in report.stdout
    listing = run_cli("model", "list", env=env)
    assert version["version"] in listing.stdout


def test_early_stopping_stops_a_rising_dev_loss_and_restores_the_best_step(
    start_worker: WorkerFactory,
    engine: Engine,
    clean_redis: str,
    database_url: str,
    tmp_path: Path,
) -> None:
    start_worker(queues="newsq.train", concurrency=1)
    with NewsClient(clean_redis, database_url=database_url) as client:
        run_id = client.train(
            train_file=sample("train.txt", 256, tmp_path / "train.txt"),
            dev_file=sample("dev.txt", 128, tmp_path / "dev.txt", shuffle_labels=True),
            tokenizer=str(TOKENIZER_DIR),
            output_dir=str(tmp_path / "runs"),
            epochs=30,
            eval_steps=4,
            batch_size=32,
            learning_rate=1e-3,
            early_stopping_patience=2,
            warmup_ratio=0.0,
        )
    run = wait_for_run(engine, run_id)
    metrics = run["metrics"]
    assert isinstance(metrics, dict)
    history = metrics["eval_history"]
    best_step, best_loss = min(history, key=lambda h: h[1])
    assert metrics["stopped_at_step"] < metrics["max_steps"]  # stopped early
    assert run["best_step"] == best_step
    assert metrics["best_eval_loss"] == pytest.approx(best_loss, abs=1e-5)
    # Evaluated again after training: the weights in the saved model are the best step's.
    assert metrics["restored_eval_loss"] == pytest.approx(best_loss, abs=1e-4)
    assert history[-1][1] > best_loss


def test_promotion_switches_running_workers_without_losing_articles(
    start_worker: WorkerFactory,
    engine: Engine,
    database_url: str,
    clean_redis: str,
    small_model: Path,
    tmp_path: Path,
) -> None:
    start_worker(reload_interval_s=0.5)
    new_version = init_model("small", tmp_path / "next", TOKENIZER_DIR, seed=1)
    registry.register_version(engine, new_version, str(tmp_path / "next"), {}, None)
    before, during, after = titles(300, "before"), titles(1000, "during"), titles(300, "after")
    with NewsClient(clean_redis) as client:
        client.enqueue(before)
        wait_until(lambda: committed_count(engine, [a[0] for a in before]) == 300)

        def trickle() -> None:
            with NewsClient(clean_redis) as sender:
                for start in range(0, 1000, 50):
                    sender.enqueue(during[start : start + 50], chunk_size=25)
                    time.sleep(0.05)

        thread = threading.Thread(target=trickle)
        thread.start()
        time.sleep(0.3)
        # promoted while articles arrive; loaded while the old model serves them
        env = {"NEWSQ_DATABASE_URL": database_url, "NEWSQ_BROKER_URL": clean_redis}
        promoted = run_cli("model", "promote", new_version, "--wait", "60", env=env)
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        assert f"every running classify worker serves {new_version}" in promoted.stdout
        assert {w["model_version"] for w in client.workers()} == {new_version}
        thread.join()
        client.enqueue(after)
    ids = [a[0] for a in before + during + after]
    wait_until(lambda: committed_count(engine, ids) == 1600, timeout=120)
    assert {version_of(engine, a[0]) for a in after} == {new_version}
    assert version_of(engine, "before-0") != new_version


def version_of(engine: Engine, article_id: str) -> str | None:
    query = (
        select(Prediction.model_version)
        .where(Prediction.article_id == article_id)
        .order_by(Prediction.created_at.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        return conn.execute(query).scalar()


def test_a_failed_run_is_marked_failed_with_the_error(
    start_worker: WorkerFactory,
    engine: Engine,
    clean_redis: str,
    database_url: str,
    tmp_path: Path,
) -> None:
    start_worker(queues="newsq.train", concurrency=1)
    with NewsClient(clean_redis, database_url=database_url) as client:
        run_id = client.train(
            train_file=str(tmp_path / "missing.txt"),
            dev_file=str(tmp_path / "missing.txt"),
            tokenizer=str(TOKENIZER_DIR),
            output_dir=str(tmp_path / "runs"),
        )
    wait_until(
        lambda: (registry.get_run(engine, run_id) or {}).get("status") == "failed", timeout=120
    )
    run = registry.get_run(engine, run_id)
    assert run is not None and "no data file" in str(run["error"])
    assert run["finished_at"] is not None
