"""The in-process micro-batcher: many classify tasks in, few large forward passes out.

Threads form a pipeline so that tokenizing, the forward pass and the SQL write of consecutive
batches overlap (each releases the GIL in native code):

    submit() -> inbox (a list per task, by priority) -> [tokenize: window, sort, cut, pad]
        -> 1 batch ahead per model thread -> [model] x model_threads
        -> up to 8 batches ahead -> [write: all that wait, in one transaction] x writers

On a CPU several model threads run single-threaded forward passes side by side (worker/tuning.py);
NEWSQ_WRITERS write threads commit side by side (one by default: on 2 CPU cores two were no faster).
A newly promoted model is loaded beside the serving one (worker/reload.py) and takes over at the
next window.

The inbox serves the message priority's lower numbers first, as the broker does (0, the
default, before 9): a worker holds tens of thousands of articles in hand, and without this a
live article taken behind a bulk job at priority 9 (`newsq reclassify`) waited for all of it.

A task submits its articles and gets a Ticket, which settles only when every one of its rows is
committed; the Celery message is acked after that (acks_late, worker/completion.py), so a crash
anywhere before the commit leaves the message to be redelivered.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from db.store import ResultColumns, ResultStore
from producer.contract import Article
from worker import metrics
from worker.batch_policy import ArrivalRate, BatchPolicy
from worker.isolate import isolate
from worker.model import Encoded, ModelRuntime, TensorBatch
from worker.reload import ModelReload, Watcher

log = logging.getLogger(__name__)

_STOP: Any = object()
_LAST = 10  # the inbox key of _STOP: after every priority (0..9)
# One transaction writes at most this many rows; up to SCORED_BACKLOG scored batches wait for it.
WRITE_ROWS_CAP = 4096
SCORED_BACKLOG = 8
CANARY = [("新闻", None)]  # a plain title: if even this fails, the fault is not in the input


class Ticket:
    """One task's share of the work; settles when all its articles are committed or one fails.

    A ticket is either waited on (a blocking `wait`, on a lock held from creation and released
    once when the ticket settles, not on a threading.Event: an Event is a Condition written in
    Python, and creating and waiting on one per task was a fifth of a worker's GIL time with
    one-article messages) or given a callback (`then`) that the settling thread calls: a classify
    task does not wait on its thread (worker/completion.py).
    """

    def __init__(self, count: int, *, alone: bool = False) -> None:
        self.alone = alone  # its articles are batched by themselves (Batcher.submit)
        self._remaining = count
        self._lock = threading.Lock()
        self._gate = threading.Lock()
        self._gate.acquire()
        self._settled = False
        self._then: list[Callable[[], None]] = []
        self.error: BaseException | None = None
        self.model_version: str | None = None
        self.rejected: list[tuple[int, str]] = []  # (index in the submitted list, reason)
        if count == 0:
            self._release_waiters()

    def settle(self, count: int, model_version: str) -> None:
        with self._lock:
            self._remaining -= count
            self.model_version = model_version
            if self._remaining <= 0:
                self._release_waiters()

    def reject(self, index: int, reason: str) -> None:
        """The article at `index` failed on its own: it is done, as a reject."""
        with self._lock:
            self.rejected.append((index, reason))
            self._remaining -= 1
            if self._remaining <= 0:
                self._release_waiters()

    def fail(self, error: BaseException) -> None:
        """Settle with `error`, unless settled already (a late timeout changes nothing)."""
        with self._lock:
            if not self._settled:
                self.error = error
                self._release_waiters()

    @property
    def settled(self) -> bool:
        return self._settled

    def then(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the ticket settles: at once if it has, else in the thread that
        settles it (a writer: keep it short)."""
        with self._lock:
            if not self._settled:
                self._then.append(callback)
                return
        callback()

    def wait(self, timeout: float) -> str | None:
        """Block until settled, failing the ticket with a TimeoutError past `timeout`; re-raise
        the batch's error; return the model version used."""
        if self._gate.acquire(timeout=timeout):
            self._gate.release()  # open for any later wait, too
        else:
            self.fail(TimeoutError(f"rows not committed within {timeout:.0f}s"))
        if self.error is not None:
            raise self.error
        return self.model_version

    def _release_waiters(self) -> None:
        """Release the waiters, once (called under self._lock)."""
        if not self._settled:
            self._settled = True
            self._gate.release()
            for callback in self._then:
                callback()


@dataclass(slots=True)
class _Item:
    article: Article
    ticket: Ticket
    index: int  # in the ticket's list of articles
    arrived: float
    tokens: int


@dataclass(slots=True)
class _Batch:
    items: list[_Item]
    runtime: ModelRuntime
    encoded: Encoded  # of the batch's window; `rows` picks this batch's rows from it
    rows: list[int]
    tensors: TensorBatch | None = None
    probs: np.ndarray | None = None
    model_version: str = ""
    labels: list[str] = field(default_factory=list)


class _Countdown:
    """The threads of one stage leaving: the last to leave passes the stop signal on."""

    def __init__(self, count: int) -> None:
        self._left = count
        self._lock = threading.Lock()

    def leave(self) -> bool:
        with self._lock:
            self._left -= 1
            return self._left == 0


class Batcher:
    def __init__(
        self,
        runtime: ModelRuntime,
        store: ResultStore,
        policy: BatchPolicy,
        *,
        watch: Watcher | None = None,
        watch_interval_s: float = 5.0,
        model_threads: int = 1,
        writers: int = 1,
        in_hand: Callable[[], int] | None = None,
    ) -> None:
        """`writers`: write threads, each committing its own transactions on its own connection.
        `in_hand`: how many tickets can be unsettled at once (the messages a worker holds,
        worker/prefetch.py); while that many are, no company can come and a window closes."""
        self.runtime = runtime
        self.store = store
        self.policy = policy
        self._in_hand = in_hand
        self._unsettled = 0  # tickets submitted and not settled yet
        self._unsettled_lock = threading.Lock()
        self._reload = (
            None
            if watch is None
            else ModelReload(watch, self._switch_model, runtime.version, watch_interval_s)
        )
        self._arrivals = ArrivalRate()  # read and written by the tokenize thread only
        self._deferred: list[_Item] | None = None  # an alone task's items, next window's own
        # (priority, order of submission, items): the lowest priority number first, then FIFO
        self._inbox: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        # One batch prepared ahead of each model thread; scored batches wait for the writer,
        # which takes all that are waiting at once (see _collect_writes).
        self._prepared: queue.Queue[Any] = queue.Queue(maxsize=model_threads)
        self._scored: queue.Queue[Any] = queue.Queue(maxsize=SCORED_BACKLOG)
        self._modelers = _Countdown(model_threads)
        self._threads = [
            *_threads(self._tokenize_loop, "newsq-tokenize", 1),
            *_threads(self._model_loop, "newsq-model", model_threads),
            *_threads(self._write_loop, "newsq-write", writers),
        ]
        self._closed = False

    def start(self) -> Batcher:
        for thread in self._threads:
            thread.start()
        if self._reload is not None:
            self._reload.start()
        return self

    def submit(
        self, articles: Sequence[Article], *, alone: bool = False, priority: int = 0
    ) -> Ticket:
        """`alone`: tokenize and run these articles in windows and forward passes of their own,
        so that a crash of the process while they are in hand is theirs (worker/tasks.py).
        `priority`: the message's, 0 (first) .. 9 (last)."""
        if self._closed:
            raise RuntimeError("batcher is closed")
        ticket = Ticket(len(articles), alone=alone)
        now = time.monotonic()
        estimate = self.policy.estimate_tokens
        items = [
            _Item(article, ticket, index, now, estimate(article.title, article.content))
            for index, article in enumerate(articles)
        ]
        if items:
            with self._unsettled_lock:
                self._unsettled += 1
            ticket.then(self._one_settled)
            key = min(max(priority, 0), _LAST - 1)  # any int a sender wrote comes before _STOP
            self._inbox.put((key, next(self._order), items))  # one put per task, not per article
        return ticket

    def _one_settled(self) -> None:
        with self._unsettled_lock:
            self._unsettled -= 1

    def close(self, timeout: float = 60.0) -> None:
        """Finish what was submitted, then stop the threads."""
        if self._closed:
            return
        self._closed = True
        if self._reload is not None:
            self._reload.close()
        self._inbox.put((_LAST, next(self._order), _STOP))
        for thread in self._threads:
            thread.join(timeout)

    # -- stage 1: collect a window, sort and cut it, tokenize and pad ---------------------------
    def _tokenize_loop(self) -> None:
        while (first := self._next_chunk()) is not _STOP:
            window, stopping = self._collect_window(first)
            runtime = self.runtime  # one model for the whole window
            try:
                # The stage's busy time: its sum over a run's seconds near 1 marks the
                # pipeline's slowest stage, as forward and write times do for theirs.
                with metrics.PREPARE_SECONDS.time():
                    try:
                        batches = self._prepare(window, runtime)
                    except Exception as exc:
                        batches = self._prepare_without_poison(window, runtime, exc)
            except Exception as exc:  # a failed window fails its tasks, never the worker
                log.exception("tokenizing a window of %d articles failed", len(window))
                _fail(window, exc)
                batches = []
            for batch in batches:
                self._prepared.put(batch)
            if stopping:
                break
        self._prepared.put(_STOP)

    def _switch_model(self, fresh: ModelRuntime) -> None:
        """Serve a newly promoted model (called by the reload thread once it is loaded). The
        window thread reads `runtime` once a window and each batch keeps the runtime that
        tokenized it, so a switch never mixes one model's tokens with another's weights."""
        log.info("switching model %s -> %s", self.runtime.version, fresh.version)
        self.runtime = fresh
        metrics.MODEL.info({"version": fresh.version, "device": str(fresh.device)})

    def _next_chunk(self) -> Any:
        """The items of the next task (or _STOP): an alone task set aside by the last window
        first."""
        chunk, self._deferred = self._deferred, None
        return chunk if chunk is not None else self._inbox.get()[2]

    def _collect_window(self, first: list[_Item]) -> tuple[list[_Item], bool]:
        """Wait for company while the policy expects some (BatchPolicy.wait_left), then take only
        what is already waiting (up to a few budgets), so that sorting has material under load.
        The inbox holds one list of items per task. An alone task is a window of its own: met
        while collecting, it closes the window and is set aside for the next."""
        policy, arrivals = self.policy, self._arrivals
        arrivals.observe(first[0].arrived, len(first))
        window, tokens = list(first), sum(item.tokens for item in first)
        if first[0].ticket.alone:
            return window, False
        arrived = first[0].arrived
        while tokens < policy.window_token_cap:
            now = time.monotonic()
            age, rate = now - arrived, arrivals.per_second(now)
            left = None if self._in_hand is None else max(0, self._in_hand() - self._unsettled)
            try:
                if policy.window_closed(tokens, len(window), age, rate, left):
                    chunk = self._inbox.get_nowait()[2]
                else:
                    chunk = self._inbox.get(timeout=policy.wait_left(age, rate))[2]
            except queue.Empty:
                break
            if chunk is _STOP:
                return window, True
            if chunk[0].ticket.alone:
                self._deferred = chunk
                break
            arrivals.observe(chunk[0].arrived, len(chunk))
            window.extend(chunk)
            tokens += sum(item.tokens for item in chunk)
        return window, False

    def _prepare(self, window: list[_Item], runtime: ModelRuntime) -> list[_Batch]:
        encoded = runtime.encode(_pairs(window))
        batches = []
        cut = time.monotonic()
        lengths = encoded.lengths
        for rows in self.policy.plan(lengths):
            tensors = runtime.collate(encoded, rows)
            batch = _Batch([window[i] for i in rows], runtime, encoded, rows, tensors)
            metrics.BATCH_ROWS.observe(len(rows))
            metrics.BATCH_PADDED_TOKENS.observe(tensors.input_ids.numel())  # as padded
            metrics.BATCH_TOKENS.inc(sum(lengths[i] for i in rows))
            batches.append(batch)
        # Once per task, whose articles arrive together: per article it was 4% of the GIL.
        for arrived in {item.ticket: item.arrived for item in window}.values():
            metrics.QUEUE_WAIT.observe(cut - arrived)
        return batches

    def _prepare_without_poison(
        self, window: list[_Item], runtime: ModelRuntime, error: Exception
    ) -> list[_Batch]:
        """Tokenizing the window raised: reject the articles that fail alone, prepare the rest."""
        found = isolate(window, lambda items: runtime.encode(_pairs(items)))
        _reject_poison(found.failed, error, "tokenizer", lambda: runtime.encode(CANARY))
        good = [item for part, _ in found.done for item in part]
        return self._prepare(good, runtime) if good else []

    # -- stage 2: the forward pass ----------------------------------------------------------------
    def _model_loop(self) -> None:
        while (batch := self._prepared.get()) is not _STOP:
            try:
                assert batch.tensors is not None
                runtime = batch.runtime
                with metrics.BATCH_SECONDS.time():
                    try:
                        batch.probs = runtime.predict(batch.tensors)
                    except Exception as exc:
                        _predict_without_poison(batch, exc)
                batch.model_version = runtime.version
                batch.labels = runtime.labels
                batch.tensors = None
            except Exception as exc:
                log.exception("forward pass over %d articles failed", len(batch.items))
                _fail(batch.items, exc)
                continue
            self._scored.put(batch)
        self._prepared.put(_STOP)  # for the other model threads
        if self._modelers.leave():
            self._scored.put(_STOP)

    # -- stage 3: bulk upserts, then release the waiting tasks --------------------------------
    def _write_loop(self) -> None:
        leftover: Any = None
        while True:
            first = leftover if leftover is not None else self._scored.get()
            if first is _STOP:
                self._scored.put(_STOP)  # for the other writers
                break
            batches, leftover = self._collect_writes(first)
            rows = sum(len(batch.items) for batch in batches)
            items = [item for batch in batches for item in batch.items]
            try:
                with metrics.WRITE_SECONDS.time():
                    self._write(batches)
            except Exception as exc:
                log.exception("writing %d predictions failed", rows)
                _fail(items, exc)
                continue
            version = first.model_version
            metrics.ARTICLES.labels(version).inc(rows)
            for item in items:
                item.ticket.settle(1, version)

    def _collect_writes(self, first: _Batch) -> tuple[list[_Batch], Any]:
        """`first` and the scored batches already waiting behind it, up to WRITE_ROWS_CAP rows
        of one model version: when the database is the slowest stage, its transactions grow
        instead of its backlog, and each commit's fixed cost is paid once per several batches.
        Returns them and the next item that did not fit (a batch, _STOP, or None)."""
        batches, rows = [first], len(first.items)
        while rows < WRITE_ROWS_CAP:
            try:
                following = self._scored.get_nowait()
            except queue.Empty:
                return batches, None
            if following is _STOP or following.model_version != first.model_version:
                return batches, following
            batches.append(following)
            rows += len(following.items)
        return batches, None

    def _write(self, batches: list[_Batch]) -> None:
        scored = [batch for batch in batches if batch.items]
        if not scored:
            return
        articles = [item.article for batch in scored for item in batch.items]
        probs = np.concatenate([batch.probs for batch in scored if batch.probs is not None])
        labels = scored[0].labels
        top = probs.argmax(axis=1)
        label_ids = top.tolist()
        results = ResultColumns(
            ids=[a.key for a in articles],
            titles=[a.title for a in articles],
            contents=[a.content for a in articles],
            sources=[a.source for a in articles],
            label_ids=label_ids,
            labels=[labels[i] for i in label_ids],
            scores=probs[np.arange(len(top)), top].tolist(),
            probs=probs,
        )
        self.store.write_batch(results, scored[0].model_version)


def _threads(target: Callable[[], None], name: str, count: int) -> list[threading.Thread]:
    return [threading.Thread(target=target, name=f"{name}-{n}", daemon=True) for n in range(count)]


def _pairs(items: Sequence[_Item]) -> list[tuple[str, str | None]]:
    return [(item.article.title, item.article.content) for item in items]


def _predict_without_poison(batch: _Batch, error: Exception) -> None:
    """The forward pass raised: keep the rows that pass without the ones that fail alone."""
    runtime, encoded = batch.runtime, batch.encoded
    found = isolate(
        range(len(batch.items)),
        lambda part: runtime.predict(runtime.collate(encoded, [batch.rows[p] for p in part])),
    )
    canary = runtime.encode(CANARY)
    _reject_poison(
        [(batch.items[p], exc) for p, exc in found.failed],
        error,
        "model",
        lambda: runtime.predict(runtime.collate(canary, [0])),
    )
    kept = [p for part, _ in found.done for p in part]
    batch.items = [batch.items[p] for p in kept]
    batch.probs = np.concatenate([probs for _, probs in found.done]) if kept else np.zeros((0, 1))


def _reject_poison(
    failed: list[tuple[_Item, Exception]], error: Exception, stage: str, canary: Callable[[], Any]
) -> None:
    """Reject the articles that failed alone, unless a plain title fails too: then the fault is
    not in the input (model or device broken), and `error` fails the whole batch, to be retried."""
    try:
        canary()
    except Exception:
        raise error from None
    for item, exc in failed:
        log.warning("article %s makes the %s fail: %r", item.article.key, stage, exc)
        item.ticket.reject(item.index, f"the {stage} fails on this article: {exc!r}"[:2000])


def _fail(items: Sequence[_Item], error: BaseException) -> None:
    for item in items:
        item.ticket.fail(error)
