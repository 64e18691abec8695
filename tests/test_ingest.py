"""`newsq ingest` end to end: real Redis, a real worker, the CLI as a user runs it."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, func, select

from db.models import Prediction
from db.queries import committed_count
from producer.contract import CLASSIFY_QUEUE
from producer.ingest import CHECKPOINT_PREFIX
from tests.conftest import WorkerFactory
from tests.test_end_to_end import wait_until

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def make_csv(path: Path, rows: int, *, with_bad: bool = False) -> list[str]:
    """A generated export: ids, titles, some multi-line quoted content, an extra column."""
    ids = []
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "title", "content", "source", "extra"])
        for i in range(rows):
            ids.append(f"row-{i}")
            content = f"第{i}篇正文，\n有换行, 也有逗号" if i % 7 == 0 else ""
            writer.writerow([f"row-{i}", f"第{i}条新闻标题", content, "gen", "x"])
        if with_bad:
            writer.writerow(["row-5", "重复的id", "", "", ""])
            writer.writerow(["bad-1", "   ", "", "", ""])
    return ids


def ingest_cmd(path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "newsq", "ingest", str(path), *args]


def cli_env(redis_url: str, database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "NEWSQ_BROKER_URL": redis_url,
        "NEWSQ_DATABASE_URL": database_url,
        "COLUMNS": "200",
    }


def prediction_total(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Prediction)).scalar_one())


def test_ten_thousand_rows_wait_and_second_run(
    start_worker: WorkerFactory,
    engine: Engine,
    clean_redis: str,
    database_url: str,
    tmp_path: Path,
) -> None:
    start_worker()
    path = tmp_path / "articles.csv"
    ids = make_csv(path, 10_000, with_bad=True)
    env = cli_env(clean_redis, database_url)
    first = subprocess.run(
        ingest_cmd(path, "--wait", "--timeout", "300"),
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    out = first.stdout + first.stderr
    assert first.returncode == 0, out
    for fragment in (
        "rows read",
        "10,002",
        "enqueued",
        "10,000",
        "duplicates skipped",
        "10,000 / 10,000 classified",
        "labels",
    ):
        assert fragment in out, fragment
    assert committed_count(engine, ids) == 10_000
    rejects = list(csv.reader((tmp_path / "articles.csv.rejects.csv").open(encoding="utf-8")))
    assert rejects[0] == ["line", "reason", "record"]
    # Physical line: header, 10,000 rows (every 7th spans two lines), the duplicate, then it.
    expected_line = 1 + 10_000 + len(range(0, 10_000, 7)) + 1 + 1
    assert [r[0] for r in rejects[1:]] == [str(expected_line)]
    assert "title is empty" in rejects[1][1]

    second = subprocess.run(
        ingest_cmd(path), env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert second.returncode == 0 and "already ingested" in second.stdout + second.stderr
    again = subprocess.run(
        ingest_cmd(path, "--restart", "--wait"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert prediction_total(engine) == 10_000  # sent twice, stored once


def test_backpressure_waits_then_an_interrupted_run_resumes(
    start_worker: WorkerFactory,
    engine: Engine,
    clean_redis: str,
    database_url: str,
    tmp_path: Path,
) -> None:
    path = tmp_path / "articles.csv"
    ids = make_csv(path, 10_000)
    env = cli_env(clean_redis, database_url)
    broker = redis.Redis.from_url(clean_redis)
    # No worker yet: with a bound of 5 messages of 100 the script must stop and wait.
    running = subprocess.Popen(
        ingest_cmd(path, "--chunk-size", "100", "--max-queue", "5"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: broker.llen(CLASSIFY_QUEUE) >= 6, timeout=60)
    time.sleep(2)
    assert running.poll() is None, "the script should be waiting, not finished"
    assert broker.llen(CLASSIFY_QUEUE) == 6  # bound + the message that found it full
    running.kill()  # SIGKILL while waiting: the next run must resume
    running.wait()
    (key,) = broker.keys(CHECKPOINT_PREFIX + "*")
    assert int(broker.hget(key, "rows_done") or 0) == 600

    start_worker()
    resumed = subprocess.run(
        ingest_cmd(path, "--chunk-size", "100", "--max-queue", "5", "--wait"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out
    assert "resumed after row" in out and "600" in out
    assert committed_count(engine, ids) == 10_000
    assert prediction_total(engine) == 10_000


def test_unreadable_file_and_wrong_column_fail_before_sending(
    clean_redis: str, database_url: str, tmp_path: Path
) -> None:
    env = cli_env(clean_redis, database_url)
    path = tmp_path / "a.csv"
    make_csv(path, 10)
    for args in ([str(tmp_path / "missing.csv")], [str(path), "--title-column", "headline"]):
        result = subprocess.run(
            [sys.executable, "-m", "newsq", "ingest", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(error_lines) == 1, result.stderr
    assert redis.Redis.from_url(clean_redis).llen(CLASSIFY_QUEUE) == 0
