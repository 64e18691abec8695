"""Faults, with real processes: poison articles, a message that kills its worker, fuzzed
messages, SIGTERM, SIGKILL chaos, a Redis restart, a database outage, secrets, exact text."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, text
from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

from benchmarks.chaos import run_chaos
from db.engine import make_engine
from db.models import ArticleRow, Reject
from db.queries import committed_count
from producer.client import NewsClient, celery_client
from producer.contract import CLASSIFY_QUEUE, CLASSIFY_TASK, priority_lists
from tests.conftest import PG_URL, WorkerFactory, run_cli
from tests.helpers import (
    CuttableProxy,
    free_port,
    message_ids,
    prediction_rows,
    publish_raw,
    rejects_of,
    titles,
    wait_until,
)
from worker.launcher import WorkerProcess

POSTGRES_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def ids_in_redis(redis_url: str) -> tuple[list[str], list[str]]:
    """Article ids of the messages waiting in the queue, and of those held unacked."""
    client = redis.Redis.from_url(redis_url)
    queued = [
        i
        for name in priority_lists(CLASSIFY_QUEUE)
        for m in client.lrange(name, 0, -1)
        for i in message_ids(m)
    ]
    held = [i for m in client.hvals("unacked") for i in message_ids(m)]
    return queued, held


# -- 4. poison input ------------------------------------------------------------------------------
@SQLITE_ONLY
def test_articles_the_model_fails_on_become_rejects_and_the_rest_is_stored(
    start_worker: WorkerFactory, engine: Engine, clean_redis: str, small_model: Path, tmp_path: Path
) -> None:
    # A model exported without segment embeddings: an article with content (segment 1) makes
    # its forward pass raise, a title alone does not. A real failure of the real model.
    config = AutoConfig.from_pretrained(str(small_model))
    config.type_vocab_size = 1
    broken = tmp_path / "no-segments"
    BertForSequenceClassification(config).save_pretrained(broken)
    AutoTokenizer.from_pretrained(str(small_model)).save_pretrained(broken)
    worker = start_worker(model_dir=str(broken))

    articles = [(f"p{i}", f"财经新闻第{i}条", "正文" if i in (3, 11) else None) for i in range(20)]
    with NewsClient(clean_redis) as client:
        message_id = client.send_chunk([client_article(a) for a in articles])
    wait_until(lambda: committed_count(engine, [a[0] for a in articles]) == 18, timeout=60)
    wait_until(lambda: len(rejects_of(engine, message_id)) == 2, timeout=30)
    rejects = rejects_of(engine, message_id)
    assert [(r.position, r.article_id) for r in rejects] == [(3, "p3"), (11, "p11")]
    assert all("the model fails on this article" in r.reason for r in rejects)
    assert json.loads(rejects[0].payload)["content"] == "正文"
    assert worker.alive


def client_article(item: tuple[str, str, str | None]) -> Any:
    from producer.client import to_article

    return to_article(item)


# -- 4b. a message that keeps killing its worker --------------------------------------------------
@contextmanager
def writes_blocked(engine: Engine) -> Iterator[None]:
    """Hold a lock on `predictions` that makes every worker's write wait: a worker holds its
    messages, mid-batch, until it is killed (a crash inside the batch, as far as it can tell)."""
    with engine.connect() as conn, conn.begin() as transaction:
        conn.execute(text("LOCK TABLE predictions IN EXCLUSIVE MODE"))
        yield
        transaction.rollback()


def suspect_counts(redis_url: str) -> dict[str, int]:
    """Per message: the times it was classified as a suspect, alone (worker/tasks.py)."""
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter("newsq:redeliveries:*"))
    return {key.decode().split(":")[2]: int(client.get(key) or 0) for key in keys}


@POSTGRES_ONLY
def test_a_message_that_keeps_killing_its_worker_is_dead_lettered(
    start_worker: WorkerFactory, engine: Engine, clean_redis: str
) -> None:
    env = {"visibility_timeout": 6, "max_deliveries": 3}
    client_redis = redis.Redis.from_url(clean_redis)
    with writes_blocked(engine):
        worker = start_worker(**env)
        with NewsClient(clean_redis) as client:
            message_id = client.send_chunk([client_article(("dl-1", "致命新闻", None))])
        wait_until(lambda: client_redis.hlen("unacked") == 1, timeout=60)  # first delivery
        for alone in (1, 2):  # then classified alone, as a suspect, twice: each time killed
            worker.kill()
            worker = start_worker(**env)
            wait_until(lambda: suspect_counts(clean_redis) == {message_id: alone}, timeout=60)  # noqa: B023
        worker.kill()
        worker = start_worker(**env)
        # Its next delivery is its fourth, over NEWSQ_MAX_DELIVERIES: dead-lettered, not tried.
        wait_until(lambda: len(rejects_of(engine, message_id)) == 1, timeout=60)
        reject = rejects_of(engine, message_id)[0]
        assert reject.article_id == "dl-1" and reject.position == 0
        assert "its worker died 3 times while classifying it, 2 of them with nothing else" in (
            reject.reason
        )
        wait_until(lambda: client_redis.hlen("unacked") == 0, timeout=30)
    assert committed_count(engine, ["dl-1"]) == 0
    with NewsClient(clean_redis) as client:  # and the worker goes on with other messages
        client.enqueue([("dl-after", "普通新闻", None)])
    wait_until(lambda: committed_count(engine, ["dl-after"]) == 1, timeout=60)
    assert worker.alive


@POSTGRES_ONLY
def test_a_death_counts_against_the_suspect_in_hand_not_every_message_held(
    start_worker: WorkerFactory, engine: Engine, clean_redis: str
) -> None:
    env = {"visibility_timeout": 6, "max_deliveries": 4}
    ids = [f"held-{n}" for n in range(4)]
    client_redis = redis.Redis.from_url(clean_redis)
    with writes_blocked(engine):
        worker = start_worker(**env)
        with NewsClient(clean_redis) as client:
            sent = [client.send_chunk([client_article((i, f"新闻{i}", None))]) for i in ids]
        wait_until(lambda: client_redis.hlen("unacked") == 4, timeout=60)
        for kills in (1, 2):  # each worker dies holding all four, one of them in hand alone
            worker.kill()
            worker = start_worker(**env)
            wait_until(lambda: sum(suspect_counts(clean_redis).values()) == kills, timeout=60)  # noqa: B023
            wait_until(lambda: client_redis.hlen("unacked") >= 4, timeout=60)
            # Counted at arrival, as before, all four would stand at `kills` already.
            assert sum(suspect_counts(clean_redis).values()) == kills
        worker.kill()
        worker = start_worker(**env)
    wait_until(lambda: committed_count(engine, ids) == 4, timeout=120)
    assert all(rejects_of(engine, message_id) == [] for message_id in sent)
    assert worker.alive


# -- 5. fuzzing -----------------------------------------------------------------------------------
json_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
bad_title = st.one_of(
    json_junk.filter(lambda v: not isinstance(v, str)),  # wrong type, nested junk
    st.text(max_size=30).map(lambda t: t + "\x00"),  # NUL
    st.text(max_size=30).map(lambda t: t + "\ud800"),  # a lone surrogate
    st.text(alphabet=" \t\n\r\x0b\x0c\u3000", max_size=10),  # empty or blank
    # huge: long text is cut to its limit before validation, so the NUL goes first
    st.integers(50_000, 300_000).map(lambda n: "\x00" + "长" * n),
)
bad_article = st.one_of(
    st.fixed_dictionaries({"title": bad_title}, optional={"id": st.text(min_size=1, max_size=10)}),
    st.fixed_dictionaries({"id": st.text(min_size=1, max_size=10)}),  # no title
    st.fixed_dictionaries(
        {
            "title": st.just("标题"),
            "id": json_junk.filter(lambda v: not isinstance(v, str) and v is not None),
        }
    ),
    st.fixed_dictionaries(  # an id is a key, never cut: too long is refused
        {"title": st.just("标题"), "id": st.integers(257, 100_000).map(lambda n: "x" * n)}
    ),
    st.fixed_dictionaries({"title": st.just("标题"), "extra": json_junk}),  # unknown field
    json_junk.filter(lambda v: not isinstance(v, dict)),  # not an object at all
)
bad_message = st.one_of(
    st.fixed_dictionaries({"articles": st.lists(bad_article, min_size=1, max_size=4)}),
    st.fixed_dictionaries(
        {"articles": json_junk.filter(lambda v: not isinstance(v, list) or not v)}
    ),
    st.fixed_dictionaries({"articles": st.just([{"title": "标题"}]), "unexpected": json_junk}),
    st.just({}),
    st.builds(lambda junk: {"__args__": [junk]}, json_junk),  # positional arguments
)


def generate(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """`count` examples of `strategy` from hypothesis's generator (no shrinking: no test runs)."""
    found: list[Any] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: Any) -> None:
        found.append(example)

    collect()
    return found


@POSTGRES_ONLY
def test_a_thousand_malformed_messages_each_leave_a_reject_and_good_ones_still_flow(
    start_worker: WorkerFactory, engine: Engine, clean_redis: str
) -> None:
    worker = start_worker()
    messages = generate(bad_message, 1000)
    assert len(messages) == 1000
    app = celery_client(clean_redis)
    sent = []
    with app.connection_for_write() as connection:
        producer = app.amqp.Producer(connection, auto_declare=False)
        for message in messages:
            task_id = str(uuid.uuid4())
            args = message.pop("__args__", ())
            app.send_task(
                CLASSIFY_TASK, args=args, kwargs=message, task_id=task_id, producer=producer
            )
            sent.append(task_id)
    for n in range(20):  # and bytes that are not UTF-8 at all, under a JSON content type
        task_id = str(uuid.uuid4())
        publish_raw(
            clean_redis,
            b'{"articles": [{"title": "\xff\xfe' + bytes([n]) + b'"}]}',
            "application/json",
            task_id,
        )
        sent.append(task_id)
    with NewsClient(clean_redis) as client:
        good = client.enqueue(titles(200, "fuzz-good"), chunk_size=20)

    def rejected_messages() -> set[str | None]:
        with engine.connect() as conn:
            return set(conn.execute(select(Reject.message_id).distinct()).scalars())

    wait_until(lambda: set(sent) <= rejected_messages(), timeout=300)
    wait_until(lambda: committed_count(engine, good) == 200, timeout=120)
    with engine.connect() as conn:
        rows = conn.execute(select(Reject.message_id, Reject.reason)).all()
    assert all(reason.strip() for _, reason in rows)
    assert worker.alive
    app.close()


# -- 6. graceful shutdown -------------------------------------------------------------------------
@SQLITE_ONLY
def test_sigterm_finishes_the_batch_in_hand_and_leaves_the_rest_queued(
    start_worker: WorkerFactory, engine: Engine, clean_redis: str
) -> None:
    worker = start_worker()
    articles = titles(4000, "term")
    ids = [a[0] for a in articles]
    with NewsClient(clean_redis) as client:
        client.enqueue(articles, chunk_size=50)
    wait_until(lambda: committed_count(engine, ids) >= 300, timeout=120)
    assert worker.process is not None
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=120) == 0
    committed = {row.article_id for row in prediction_rows(engine, ids)}
    queued, held = ids_in_redis(clean_redis)
    assert held == []  # nothing left unacked by the stopped worker
    assert 300 <= len(committed) < 4000, "the run ended before the signal; nothing was tested"
    assert committed.isdisjoint(queued) and committed | set(queued) == set(ids)
    start_worker()
    wait_until(lambda: committed_count(engine, ids) == 4000, timeout=240)


# -- 1. SIGKILL chaos (CI variant of `python -m benchmarks.chaos`) --------------------------------
@POSTGRES_ONLY
def test_five_kills_during_five_thousand_articles_lose_and_duplicate_nothing(
    start_worker: WorkerFactory, engine: Engine, clean_redis: str
) -> None:
    titles_ = titles(5000, "chaos")
    result = run_chaos(
        # Kills come about as often as a worker's prefetch (16 x 50) is done: a message is held
        # by several dying workers, yet, at the default NEWSQ_MAX_DELIVERIES, none is rejected.
        lambda: start_worker(visibility_timeout=8),
        clean_redis,
        engine,
        [(i, t) for i, t, _ in titles_],
        kills=5,
        chunk_size=50,
        timeout=300,
    )
    assert result.kills_with_work_left == 5, result
    assert (result.lost, result.duplicated, result.rejected) == (0, 0, 0), result
    assert result.redelivered_messages > 0, result


# -- 2. Redis restart -----------------------------------------------------------------------------
@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A test-owned redis-server with AOF on; yields its URL and a restart function."""
    port = free_port()
    command = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
        "--dir",
        str(tmp_path),
    ]
    holder: dict[str, subprocess.Popen[bytes]] = {}

    def start() -> None:
        holder["p"] = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        wait_until(lambda: _pings(url), timeout=20)

    def restart(down_s: float) -> None:
        holder["p"].send_signal(signal.SIGTERM)
        holder["p"].wait(30)
        time.sleep(down_s)
        start()

    start()
    yield f"redis://127.0.0.1:{port}/0", restart
    holder["p"].terminate()
    holder["p"].wait(30)


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.RedisError:
        return False


@POSTGRES_ONLY
def test_a_redis_restart_mid_run_loses_nothing(
    database_url: str, engine: Engine, small_model: Path, own_redis: tuple[str, Any], tmp_path: Path
) -> None:
    url, restart = own_redis
    env = {
        "NEWSQ_DATABASE_URL": database_url,
        "NEWSQ_MODEL_DIR": str(small_model),
        "NEWSQ_VISIBILITY_TIMEOUT": "8",
        "NEWSQ_METRICS_PORT": "0",
        "NEWSQ_CONCURRENCY": "16",
        "NEWSQ_ARTICLES_IN_HAND": "800",  # 16 messages of 50 in hand, as 16 threads held
    }
    worker = WorkerProcess(url, env, name=f"rr-{uuid.uuid4().hex[:6]}", log_path=tmp_path / "w.log")
    worker.start()
    try:
        first, second = titles(2000, "rr-a"), titles(2000, "rr-b")
        ids = [a[0] for a in first + second]
        with NewsClient(url) as client:
            client.enqueue(first, chunk_size=50)
            wait_until(lambda: committed_count(engine, ids) >= 300, timeout=120)
            # Mid-run: rows are still to come as Redis goes down. (Checked after the restart, as
            # it was, the worker could finish in the time the new server took to answer a ping.)
            assert committed_count(engine, ids) < 2000, "the run ended before the restart"
            restart(3.0)
            client.enqueue(second, chunk_size=50)  # the same client, reconnecting by itself
        wait_until(lambda: committed_count(engine, ids) == 4000, timeout=240)
        assert worker.alive  # the same process: it reconnected, nobody restarted it
    finally:
        worker.stop()


# -- 3. database outage ---------------------------------------------------------------------------
@POSTGRES_ONLY
def test_a_thirty_second_database_outage_is_retried_and_loses_nothing(
    start_worker: WorkerFactory, database_url: str, engine: Engine, clean_redis: str
) -> None:
    proxy = CuttableProxy(("127.0.0.1", 5432))
    proxy.open()
    worker = start_worker(
        database_url=database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    )
    pid = worker.process.pid if worker.process else None
    first, second = titles(2000, "out-a"), titles(2000, "out-b")
    ids = [a[0] for a in first + second]
    with NewsClient(clean_redis) as client:
        client.enqueue(first, chunk_size=50)
        wait_until(lambda: committed_count(engine, ids) >= 300, timeout=120)
        proxy.cut()
        client.enqueue(second, chunk_size=50)
        time.sleep(30)
        # Nothing was acked without its rows: every article is committed or still in Redis.
        committed = {row.article_id for row in prediction_rows(engine, ids)}
        queued, held = ids_in_redis(clean_redis)
        assert len(committed) < 4000
        assert committed | set(queued) | set(held) == set(ids)
        proxy.open()
    wait_until(lambda: committed_count(engine, ids) == 4000, timeout=240)
    assert worker.alive and worker.process is not None and worker.process.pid == pid
    with engine.connect() as conn:
        assert conn.execute(select(Reject.reason)).all() == []  # retried, never given up


# -- 8. secrets -----------------------------------------------------------------------------------
@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[str]:
    port, password = free_port(), "s3cr3t-redis-pw"
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            password,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    wait_until(lambda: _pings(url), timeout=20)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(f"redis://127.0.0.1:{port}/0").set("k", "v")
    yield url
    process.terminate()
    process.wait(30)


@pytest.fixture
def postgres_with_password() -> Iterator[str]:
    role, password = f"newsq_pw_{uuid.uuid4().hex[:6]}", "s3cr3t-pg-pw"
    plain = PG_URL.replace("+psycopg", "")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute(f"CREATE SCHEMA {role} AUTHORIZATION {role}")
    yield PG_URL.replace("postgres@", f"{role}:{password}@") + f"?options=-csearch_path%3D{role}"
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {role} CASCADE")
        conn.execute(f"DROP ROLE {role}")


def test_passwords_work_from_urls_and_never_reach_logs_or_status(
    redis_with_password: str, postgres_with_password: str, small_model: Path, tmp_path: Path
) -> None:
    env = {"NEWSQ_BROKER_URL": redis_with_password, "NEWSQ_DATABASE_URL": postgres_with_password}
    assert run_cli("db", "upgrade", env=env).returncode == 0
    log = tmp_path / "worker.log"
    worker = WorkerProcess(
        redis_with_password,
        {
            **env,
            "NEWSQ_MODEL_DIR": str(small_model),
            "NEWSQ_METRICS_PORT": "0",
            "NEWSQ_LOG_LEVEL": "DEBUG",
        },
        name=f"pw-{uuid.uuid4().hex[:6]}",
        log_path=log,
    ).start()
    try:
        engine = make_engine(postgres_with_password)
        with NewsClient(redis_with_password) as client:
            ids = client.enqueue(titles(50, "pw"))
        wait_until(lambda: committed_count(engine, ids) == 50, timeout=120)
        engine.dispose()
        status = run_cli("status", env=env)
        status_json = run_cli("status", "--json", env=env)
    finally:
        worker.stop()
    assert status.returncode == 0 and status_json.returncode == 0, status.stderr
    for shown in (log.read_text(), status.stdout + status.stderr, status_json.stdout):
        assert "s3cr3t" not in shown
    assert "***" in status.stdout


# -- 9. text is stored exactly as sent ------------------------------------------------------------
def test_quotes_emoji_rtl_marks_and_control_characters_round_trip_exactly(
    start_worker: WorkerFactory, engine: Engine, clean_redis: str
) -> None:
    start_worker()
    texts = {
        "quotes": ("'); DROP TABLE articles; --", 'say "hi" \\ back\\slash'),
        "emoji": ("股市🚀📈 涨了 👨‍👩‍👧", "🙂" * 50),
        "rtl": ("\u202eمرحبا\u200f 新闻 \u200e", "עברית \u202b嵌入\u202c"),
        "controls": ("标题\x01\x07\x1b[31m\x7f\u0085", "tab\there\r\nline\x0bvt\x0cff"),
        "percent": ("100% %s %(name)s {0} :param", "$1 ? ;"),
    }
    with NewsClient(clean_redis) as client:
        client.enqueue([(key, title, content) for key, (title, content) in texts.items()])
    wait_until(lambda: committed_count(engine, list(texts)) == len(texts), timeout=60)
    with engine.connect() as conn:
        stored = {
            row.id: (row.title, row.content)
            for row in conn.execute(select(ArticleRow).where(ArticleRow.id.in_(list(texts))))
        }
    assert stored == texts


def test_no_sql_is_built_from_strings() -> None:
    """Every statement goes through SQLAlchemy constructs or bound parameters."""
    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"""(?<!\w)(text|execute|exec_driver_sql)\(\s*f?["'].*(\{|%s|\+)""")
    offenders = [
        f"{path}:{number}"
        for package in ("db", "worker", "producer", "newsq")
        for path in (root / package).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
