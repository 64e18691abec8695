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
from tests.conftest import WorkerFactory, run_cli
from tests.helpers import wait_until

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


def run_ingest(path: Path, *args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run `newsq ingest` to the end; its exit code and everything it printed."""
    done = run_cli("ingest", str(path), *args, env=env)
    return done.returncode, done.stdout + done.stderr


def cli_env(redis_url: str, database_url: str) -> dict[str, str]:
    return {
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
    code, out = run_ingest(path, "--wait", "--timeout", "300", env=env)
    assert code == 0, out
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

    (key,) = redis.Redis.from_url(clean_redis).keys(CHECKPOINT_PREFIX + "*")
    counters = redis.Redis.from_url(clean_redis, decode_responses=True).hgetall(key)
    assert (
        counters["rows_read"],
        counters["enqueued"],
        counters["rejected"],
        counters["duplicates"],
        counters["status"],
    ) == ("10002", "10000", "1", "1", "done")
    code, out = run_ingest(path, env=env)
    assert code == 0 and "already ingested" in out
    code, out = run_ingest(path, "--restart", "--wait", env=env)
    assert code == 0, out
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
        env={**os.environ, **env},
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
    code, out = run_ingest(path, "--chunk-size", "100", "--max-queue", "5", "--wait", env=env)
    assert code == 0, out
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
        result = run_cli("ingest", *args, env=env)
        assert result.returncode == 2
        error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(error_lines) == 1, result.stderr
    assert redis.Redis.from_url(clean_redis).llen(CLASSIFY_QUEUE) == 0


def test_standard_input_and_json_lines(clean_redis: str, database_url: str, tmp_path: Path) -> None:
    env = cli_env(clean_redis, database_url)
    path = tmp_path / "a.csv"
    make_csv(path, 1000)
    with path.open("rb") as stdin:
        done = run_cli("ingest", "-", "--chunk-size", "100", env=env, stdin=stdin)
    assert done.returncode == 0, done.stderr
    broker = redis.Redis.from_url(clean_redis)
    assert broker.llen(CLASSIFY_QUEUE) == 10
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(
        '{"id": 1, "title": "第一条"}\n{"title": ""}\n{"id": "x", "title": "第二条"}\n',
        encoding="utf-8",
    )
    code, out = run_ingest(jsonl, env=env)
    assert code == 0, out
    assert broker.llen(CLASSIFY_QUEUE) == 11
    rejects = (tmp_path / "a.jsonl.rejects.csv").read_text(encoding="utf-8").splitlines()
    assert rejects[1].startswith("2,title is empty")
