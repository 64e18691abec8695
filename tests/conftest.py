"""Fixtures on the real services: Redis (own db index), PostgreSQL (own schema), SQLite files,
a small model made once per session, and real worker processes.

A missing service skips its tests on a laptop, and fails them under CI=true.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from sqlalchemy import Engine

from db.engine import make_engine
from db.migrate import upgrade
from worker.launcher import WorkerProcess

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = Path(
    os.environ.get("NEWSQ_TOKENIZER_DIR", ROOT.parent / "shared/data/bert-base-chinese")
)


def _own_db(url: str) -> str:
    """`url` with the db index moved up by the pytest-xdist process's number (gw0, gw1, ...),
    so that each process flushes a Redis db of its own: 11, 12, ... by default."""
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    parts = urlsplit(url)
    return parts._replace(path=f"/{int(parts.path.strip('/') or 0) + index}").geturl()


REDIS_URL = _own_db(os.environ.get("NEWSQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/11"))
PG_URL = os.environ.get("NEWSQ_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def service_missing(what: str, error: Exception) -> None:
    message = f"{what} is not reachable: {error}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: a missing service is a failure)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_missing("Redis", exc)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()


@pytest.fixture
def clean_redis(redis_url: str) -> str:
    redis.Redis.from_url(redis_url).flushdb()
    return redis_url


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    if not (TOKENIZER_DIR / "vocab.txt").exists():
        pytest.fail(f"tokenizer folder {TOKENIZER_DIR} missing (../shared/data beside the repo)")
    return TOKENIZER_DIR


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    from worker.model_shapes import init_model

    path = tmp_path_factory.mktemp("model") / "small"
    init_model("small", path, tokenizer_dir)
    return path


def postgres_schema_url() -> Iterator[str]:
    """A fresh schema for one use; the URL selects it through libpq's search_path option."""
    schema = f"newsq_test_{uuid.uuid4().hex[:10]}"
    plain = PG_URL.replace("+psycopg", "")
    try:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.Error as exc:
        service_missing("PostgreSQL", exc)
    yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty, migrated database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'newsq.db'}"
        upgrade(url)
        yield url
    else:
        for url in postgres_schema_url():
            upgrade(url)
            yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


WorkerFactory = Callable[..., WorkerProcess]


def run_cli(
    *args: str,
    env: dict[str, str],
    timeout: float = 400,
    stdin: IO[bytes] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `newsq ARGS...` as a user would, in a fresh interpreter; nothing raised on failure."""
    return subprocess.run(
        [sys.executable, "-m", "newsq", *args],
        env={**os.environ, **env},
        stdin=stdin,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def start_worker(
    clean_redis: str, database_url: str, small_model: Path, tmp_path: Path
) -> Iterator[WorkerFactory]:
    """Start real `newsq worker` processes; all are stopped at the end of the test."""
    started: list[WorkerProcess] = []

    def factory(queues: str = "newsq.classify", **env: Any) -> WorkerProcess:
        settings = {
            "NEWSQ_DATABASE_URL": database_url,
            "NEWSQ_MODEL_DIR": str(small_model),
            "NEWSQ_CONCURRENCY": "16",
            "NEWSQ_ARTICLES_IN_HAND": "800",  # 16 messages of 50 in hand, as 16 threads held
            "NEWSQ_METRICS_PORT": "0",
            **{f"NEWSQ_{k.upper()}": str(v) for k, v in env.items()},
        }
        name = f"test-{uuid.uuid4().hex[:6]}"
        process = WorkerProcess(
            clean_redis, settings, name=name, queues=queues, log_path=tmp_path / f"{name}.log"
        )
        started.append(process)
        return process.start()

    yield factory
    for process in started:
        process.stop(timeout=30)
