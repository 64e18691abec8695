"""The in-process batcher with the real small model and a real SQLite store, no Redis."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY
from sqlalchemy import Engine, func, select

from db.engine import make_engine
from db.migrate import upgrade
from db.models import Prediction
from db.store import ResultColumns, ResultStore
from producer.contract import Article
from tests.helpers import wait_until
from worker.batch_policy import BatchPolicy
from worker.batcher import Batcher
from worker.model import Encoded, ForwardPass, ModelRuntime, TensorBatch
from worker.reload import Watcher


class CountingStore(ResultStore):
    """The real store, counting batch writes and optionally failing the first one."""

    def __init__(self, engine: Engine, fail_first: bool = False) -> None:
        super().__init__(engine)
        self.batch_sizes: list[int] = []
        self.fail_next = fail_first

    def write_batch(self, results: ResultColumns, model_version: str) -> None:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("database went away")
        super().write_batch(results, model_version)
        self.batch_sizes.append(len(results))


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


class PoisonedRuntime(ModelRuntime):
    """The real runtime, except that its tokenizer fails on any text holding ☠, its model on
    any row holding the token 毒, and everything fails while `broken` is set."""

    broken = False

    def encode(self, pairs: Sequence[tuple[str, str | None]]) -> Encoded:
        if any("☠" in title for title, _ in pairs):
            raise ValueError("tokenizer chokes")
        return super().encode(pairs)

    def predict(self, batch: TensorBatch) -> np.ndarray:
        poison = self._backend.token_to_id("毒")
        if self.broken or bool((batch.input_ids == poison).any()):
            raise RuntimeError("model chokes")
        return super().predict(batch)


def make_batcher(
    small_model: Path,
    store: ResultStore,
    max_wait_s: float = 0.05,
    runtime_class: type[ModelRuntime] = ModelRuntime,
    model_threads: int = 1,
    writers: int = 1,
    in_hand: int | None = None,
    watch: Watcher | None = None,
) -> Batcher:
    runtime = runtime_class.load(str(small_model), device="cpu", max_length=32)
    store.register_model_version(runtime.version, runtime.path)
    policy = BatchPolicy(token_budget=2048, max_wait_s=max_wait_s, max_rows=256, max_length=32)
    return Batcher(
        runtime,
        store,
        policy,
        model_threads=model_threads,
        writers=writers,
        in_hand=None if in_hand is None else lambda: in_hand,
        watch=watch,
        watch_interval_s=0.05,
    ).start()


@pytest.mark.parametrize(("model_threads", "writers"), [(1, 1), (2, 2)])
def test_articles_of_many_tasks_share_batches_and_every_task_settles(
    small_model: Path, sqlite_engine: Engine, model_threads: int, writers: int
) -> None:
    store = CountingStore(sqlite_engine)
    batcher = make_batcher(small_model, store, model_threads=model_threads, writers=writers)
    versions: list[str | None] = []

    def task(n: int) -> None:
        articles = [Article(id=f"t{n}-{i}", title=f"第{n}个任务的第{i}条新闻") for i in range(5)]
        versions.append(batcher.submit(articles).wait(timeout=60))

    threads = [threading.Thread(target=task, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batcher.close()

    assert len(versions) == 40 and all(v == batcher.runtime.version for v in versions)
    with sqlite_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Prediction)).scalar_one() == 200
    assert sum(store.batch_sizes) == 200
    assert len(store.batch_sizes) < 40  # batches were formed across tasks


def test_a_window_holding_every_message_in_hand_goes_without_waiting(
    small_model: Path, sqlite_engine: Engine
) -> None:
    store = CountingStore(sqlite_engine)
    # A wait far longer than the test allows each ticket: only the in-hand rule can close it.
    batcher = make_batcher(small_model, store, max_wait_s=30.0, in_hand=8)
    tickets = [batcher.submit([Article(id=f"s{n}", title=f"第{n}条新闻")]) for n in range(8)]
    assert all(ticket.wait(timeout=10) == batcher.runtime.version for ticket in tickets)
    assert store.batch_sizes == [8]
    batcher.close()


class WindowLog(ModelRuntime):
    """The real runtime, logging the titles of each window it tokenizes."""

    windows: ClassVar[list[list[str]]] = []

    def encode(self, pairs: Sequence[tuple[str, str | None]]) -> Encoded:
        self.windows.append([title for title, _ in pairs])
        return super().encode(pairs)


def test_an_alone_task_is_tokenized_and_batched_by_itself(
    small_model: Path, sqlite_engine: Engine
) -> None:
    store = CountingStore(sqlite_engine)
    # A long wait: every task below is submitted while the first window still waits for company.
    batcher = make_batcher(small_model, store, max_wait_s=2.0, runtime_class=WindowLog)
    WindowLog.windows = []
    sizes = {"a": 3, "b": 2, "suspect": 4, "c": 2, "d": 1}

    def titles(task: str) -> list[str]:
        return [f"{task}新闻{i}" for i in range(sizes[task])]

    tickets = [
        batcher.submit([Article(title=t) for t in titles(task)], alone=task == "suspect")
        for task in sizes
    ]
    assert all(ticket.wait(timeout=30) == batcher.runtime.version for ticket in tickets)
    batcher.close()
    assert WindowLog.windows == [
        titles("a") + titles("b"),
        titles("suspect"),  # it closed the window before it, and nothing joined its own
        titles("c") + titles("d"),
    ]


def test_a_live_task_overtakes_the_bulk_tasks_waiting_in_the_inbox(
    small_model: Path, sqlite_engine: Engine
) -> None:
    store = CountingStore(sqlite_engine)
    batcher = make_batcher(small_model, store, runtime_class=WindowLog)
    WindowLog.windows = []
    # More tokens than a window holds (4 budgets of 2,048): the window closes at once, and the
    # tasks below wait in the inbox while it is tokenized.
    big = [Article(title=f"批量任务的第{i}条新闻标题") for i in range(1000)]
    bulk = [[Article(title=f"批量{n}新闻{i}") for i in range(5)] for n in range(3)]
    live = [Article(title=f"实时新闻{i}") for i in range(5)]
    tickets = [batcher.submit(big, priority=9)]
    tickets += [batcher.submit(articles, priority=9) for articles in bulk]
    tickets.append(batcher.submit(live, priority=0))
    assert all(ticket.wait(timeout=60) == batcher.runtime.version for ticket in tickets)
    batcher.close()
    order = [title for window in WindowLog.windows for title in window]
    first_live = order.index(live[0].title)
    assert first_live < order.index(bulk[0][0].title)  # submitted last, tokenized first
    assert order[first_live : first_live + 5] == [a.title for a in live]


def test_a_failed_batch_fails_its_tasks_and_the_batcher_keeps_serving(
    small_model: Path, sqlite_engine: Engine
) -> None:
    store = CountingStore(sqlite_engine, fail_first=True)
    batcher = make_batcher(small_model, store, max_wait_s=0.0)
    first = batcher.submit([Article(id="a", title="第一条")])
    with pytest.raises(RuntimeError, match="database went away"):
        first.wait(timeout=60)
    second = batcher.submit([Article(id="b", title="第二条")])
    assert second.wait(timeout=60) == batcher.runtime.version
    batcher.close()


@pytest.mark.parametrize(("model_threads", "writers"), [(1, 1), (3, 2)])
def test_close_finishes_what_was_submitted(
    small_model: Path, sqlite_engine: Engine, model_threads: int, writers: int
) -> None:
    store = CountingStore(sqlite_engine)
    batcher = make_batcher(
        small_model, store, max_wait_s=1.0, model_threads=model_threads, writers=writers
    )
    ticket = batcher.submit([Article(id=f"c{i}", title=f"标题{i}") for i in range(30)])
    batcher.close()
    assert ticket.wait(timeout=1) is not None
    assert not any(thread.is_alive() for thread in batcher._threads)
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit([Article(title="too late")])


def store_and_model_to_promote(
    small_model: Path, engine: Engine, version: str
) -> tuple[CountingStore, ModelRuntime]:
    """A store, and a second runtime of the small model under `version`, registered in it."""
    store = CountingStore(engine)
    fresh = ModelRuntime.load(str(small_model), device="cpu", max_length=32, version=version)
    store.register_model_version(fresh.version, fresh.path)
    return store, fresh


def test_a_promoted_model_loads_while_the_serving_one_serves_then_takes_over(
    small_model: Path, sqlite_engine: Engine
) -> None:
    store, fresh = store_and_model_to_promote(small_model, sqlite_engine, "next")
    loading, loaded = threading.Event(), threading.Event()
    asked: list[str] = []

    def watch(newest: str) -> ModelRuntime | None:
        asked.append(newest)
        if newest == fresh.version:
            return None
        loading.set()
        loaded.wait(timeout=30)  # a slow load (on a GPU: every CUDA graph's capture)
        return fresh

    batcher = make_batcher(small_model, store, watch=watch)
    serving = batcher.runtime.version
    assert loading.wait(timeout=10)
    tickets = [batcher.submit([Article(id=f"d{n}", title=f"加载期间的新闻{n}")]) for n in range(5)]
    assert all(ticket.wait(timeout=10) == serving for ticket in tickets)  # not held back
    loaded.set()
    wait_until(lambda: batcher.runtime.version == fresh.version, timeout=10)
    after = batcher.submit([Article(id="after", title="切换之后的新闻")])
    assert after.wait(timeout=10) == fresh.version
    wait_until(lambda: asked[-1] == fresh.version, timeout=10)  # asks again from the newest
    batcher.close()


def test_a_promoted_model_that_fails_to_load_leaves_the_serving_one_serving(
    small_model: Path, sqlite_engine: Engine
) -> None:
    store, fresh = store_and_model_to_promote(small_model, sqlite_engine, "fixed")
    attempts: list[str] = []

    def watch(newest: str) -> ModelRuntime | None:
        if newest == fresh.version:
            return None
        attempts.append(newest)
        if len(attempts) < 3:
            raise OSError("config.json: no such file")  # e.g. promoted before it was copied
        return fresh

    failures = REGISTRY.get_sample_value("newsq_model_reload_failures_total") or 0.0
    batcher = make_batcher(small_model, store, watch=watch)
    serving = batcher.runtime.version
    wait_until(lambda: len(attempts) >= 2, timeout=10)
    ticket = batcher.submit([Article(id="kept", title="加载失败时的新闻")])
    assert ticket.wait(timeout=10) in {serving, fresh.version}  # served all along
    wait_until(lambda: batcher.runtime.version == fresh.version, timeout=10)  # tried again
    assert REGISTRY.get_sample_value("newsq_model_reload_failures_total") == failures + 2
    batcher.close()


def test_poison_articles_are_isolated_and_rejected_while_the_rest_is_stored(
    small_model: Path, sqlite_engine: Engine
) -> None:
    store = CountingStore(sqlite_engine)
    batcher = make_batcher(small_model, store, max_wait_s=0.2, runtime_class=PoisonedRuntime)
    titles = [f"第{i}条财经新闻" for i in range(40)]
    titles[7], titles[23] = "这条新闻有毒", "骷髅☠标题"
    mixed = batcher.submit([Article(id=f"m{i}", title=t) for i, t in enumerate(titles)])
    clean = batcher.submit([Article(id=f"c{i}", title=f"体育新闻{i}") for i in range(10)])
    assert mixed.wait(timeout=60) == clean.wait(timeout=60) == batcher.runtime.version
    assert sorted(mixed.rejected) == [
        (7, "the model fails on this article: RuntimeError('model chokes')"),
        (23, "the tokenizer fails on this article: ValueError('tokenizer chokes')"),
    ]
    assert clean.rejected == []
    with sqlite_engine.connect() as conn:
        stored = set(conn.execute(select(Prediction.article_id)).scalars())
    assert stored == {f"m{i}" for i in range(40) if i not in (7, 23)} | {f"c{i}" for i in range(10)}

    # A model that fails on everything, a plain title included, is not an input problem:
    # the batch fails as a whole (its task retries), nothing is rejected.
    assert isinstance(batcher.runtime, PoisonedRuntime)
    batcher.runtime.broken = True
    broken = batcher.submit([Article(id=f"b{i}", title=f"新闻{i}") for i in range(5)])
    with pytest.raises(RuntimeError, match="model chokes"):
        broken.wait(timeout=60)
    assert broken.rejected == []
    batcher.runtime.broken = False
    assert batcher.submit([Article(id="after", title="恢复")]).wait(timeout=60) is not None
    batcher.close()


class NaNOnToken(torch.nn.Module):
    """The real model, except that rows holding `token` come out as NaN (an overflow)."""

    def __init__(self, model: torch.nn.Module, token: int) -> None:
        super().__init__()
        self.model, self.token = model, token

    def forward(self, input_ids: torch.Tensor, **kwargs: torch.Tensor) -> Any:
        output = self.model(input_ids=input_ids, **kwargs)
        output.logits[(input_ids == self.token).any(dim=1)] = float("nan")
        return output


def test_a_row_with_non_finite_output_is_rejected_and_the_rest_stored(
    small_model: Path, sqlite_engine: Engine
) -> None:
    batcher = make_batcher(small_model, ResultStore(sqlite_engine))
    runtime = batcher.runtime
    nan_model = NaNOnToken(runtime.model, runtime._backend.token_to_id("溢"))
    runtime._forward = ForwardPass(nan_model, "cpu", autocast=False)
    titles = ["溢出的新闻" if i == 3 else f"第{i}条新闻" for i in range(12)]
    ticket = batcher.submit([Article(id=f"n{i}", title=t) for i, t in enumerate(titles)])
    assert ticket.wait(timeout=60) == runtime.version
    assert ticket.rejected == [
        (3, "the model fails on this article: "
         "FloatingPointError('non-finite output for 1 of 1 rows')"),
    ]  # fmt: skip
    with sqlite_engine.connect() as conn:
        stored = set(conn.execute(select(Prediction.article_id)).scalars())
    assert stored == {f"n{i}" for i in range(12) if i != 3}
    batcher.close()
