"""Enqueueing without Celery or our code: the documented wire format, pushed with redis-py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import Engine

from db.queries import latest_rows
from tests.conftest import WorkerFactory
from tests.helpers import wait_until

# The README's example, run as a separate program that can import only redis-py and the stdlib.
PUSH = r"""
import base64, json, sys, uuid
import redis

redis_url, mode, articles = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
task_id = str(uuid.uuid4())
embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
body = [[], {"articles": articles}, embed]
if mode == "full":
    headers = {"lang": "py", "task": "newsq.classify", "id": task_id, "shadow": None, "eta": None,
               "expires": None, "group": None, "group_index": None, "retries": 0,
               "timelimit": [None, None], "root_id": task_id, "parent_id": None,
               "argsrepr": "()", "kwargsrepr": "{'articles': ...}", "origin": "node@host",
               "ignore_result": True}
else:  # what minimal Celery clients in other languages send
    headers = {"task": "newsq.classify", "id": task_id}
    body = [[], {"articles": articles}, {}]
envelope = {
    "body": base64.b64encode(json.dumps(body).encode()).decode(),
    "content-encoding": "utf-8",
    "content-type": "application/json",
    "headers": headers,
    "properties": {
        "correlation_id": task_id,
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": "newsq.classify"},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    },
}
redis.Redis.from_url(redis_url).lpush("newsq.classify", json.dumps(envelope))
leaked = [m for m in ("celery", "kombu", "producer", "worker", "db") if m in sys.modules]
print(json.dumps({"task_id": task_id, "leaked": leaked}))
"""


def push(redis_url: str, mode: str, articles: list[dict[str, str]]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PUSH, redis_url, mode, json.dumps(articles)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result = json.loads(out.stdout)
    assert result["leaked"] == []
    return str(result["task_id"])


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("mode", ["full", "minimal"])
def test_plain_redis_client_enqueues_and_the_row_appears(
    start_worker: WorkerFactory, engine: Engine, clean_redis: str, mode: str
) -> None:
    start_worker()
    articles = [
        {"id": f"wire-{mode}-1", "title": "外部系统发送的新闻标题"},
        {"id": f"wire-{mode}-2", "title": "第二条", "content": "正文", "source": "go"},
    ]
    push(clean_redis, mode, articles)
    ids = [a["id"] for a in articles]
    wait_until(lambda: len(latest_rows(engine, ids)) == 2, timeout=60)
    rows = latest_rows(engine, ids)
    assert rows[f"wire-{mode}-2"]["source"] == "go"
    assert len(rows[f"wire-{mode}-1"]["probs"]) == 10
