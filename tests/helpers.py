"""Helpers shared by the tests that drive real workers: sample articles, polling, raw messages,
a TCP proxy that can cut a service off; and whether a model runtime is freed without the
collector."""

from __future__ import annotations

import base64
import contextlib
import gc
import json
import socket
import threading
import time
import weakref
from collections.abc import Callable
from urllib.parse import urlsplit

from kombu.connection import Connection
from sqlalchemy import Engine, select

from db.models import Prediction, Reject
from producer.contract import BROKER_TRANSPORT_OPTIONS, CLASSIFY_QUEUE, CLASSIFY_TASK
from worker.model import ModelRuntime


def titles(count: int, prefix: str) -> list[tuple[str, str, None]]:
    words = ["央行", "股市", "球队", "游戏", "电影", "学校", "楼市", "科技", "政府", "社会"]
    return [
        (f"{prefix}-{i}", f"{words[i % 10]}新闻第{i}条：{words[(i * 7) % 10]}动态", None)
        for i in range(count)
    ]


def wait_until(predicate: object, timeout: float = 120.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout:.0f}s")


def prediction_rows(engine: Engine, ids: list[str]) -> list[Prediction]:
    with engine.connect() as conn:
        query = select(Prediction).where(Prediction.article_id.in_(ids))
        return list(conn.execute(query).all())  # type: ignore[arg-type]


def rejects_of(engine: Engine, message_id: str) -> list[Reject]:
    with engine.connect() as conn:
        query = select(Reject).where(Reject.message_id == message_id).order_by(Reject.position)
        return list(conn.execute(query).all())  # type: ignore[arg-type]


def publish_raw(redis_url: str, body: bytes, content_type: str, task_id: str) -> None:
    """Put a hand-made protocol v2 envelope on the queue, bypassing Celery's serializer."""
    with Connection(redis_url, transport_options=BROKER_TRANSPORT_OPTIONS) as conn:
        producer = conn.Producer()
        producer.publish(
            body,
            routing_key=CLASSIFY_QUEUE,
            content_type=content_type,
            content_encoding="binary" if content_type.endswith("serialize") else "utf-8",
            headers={"task": CLASSIFY_TASK, "id": task_id, "lang": "py"},
            declare=[],
        )


def message_ids(raw: bytes | str) -> list[str]:
    """Article ids inside one stored kombu message (queue entry or unacked entry)."""
    envelope = json.loads(raw)
    if isinstance(envelope, list):  # the unacked hash stores [message, exchange, routing key]
        envelope = envelope[0]
    _, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
    return [article["id"] for article in kwargs["articles"]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CuttableProxy:
    """A TCP proxy (to PostgreSQL, Redis) that can drop every connection and refuse new ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def open(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def cut(self) -> None:
        assert self._listener is not None
        # shutdown() wakes the thread blocked in accept(); close() alone would leave it accepting
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def redis_behind_proxy(redis_url: str) -> tuple[CuttableProxy, str]:
    """An open proxy to the Redis of `redis_url` (redis://host:port/db), and the URL through it."""
    url = urlsplit(redis_url)
    proxy = CuttableProxy((url.hostname or "127.0.0.1", url.port or 6379))
    proxy.open()
    return proxy, f"redis://127.0.0.1:{proxy.port}{url.path}"


def freed_by_reference_count(load: Callable[[], ModelRuntime]) -> bool:
    """Whether the runtime that `load` returns, and its model, are freed with the collector off
    once their last reference goes: a runtime replaced by a promotion is frozen out of the
    collector (worker/heap.py), so a reference cycle through it would keep its weights for
    good."""
    runtime = load()
    gone, model_gone = weakref.ref(runtime), weakref.ref(runtime.model)
    gc.disable()
    try:
        del runtime
        return gone() is None and model_gone() is None
    finally:
        gc.enable()


def warmed(model: str, device: str, shapes: list[tuple[int, int]]) -> ModelRuntime:
    runtime = ModelRuntime.load(model, device=device)
    runtime.warm_up(shapes)
    return runtime
