"""The per-process singletons of a worker: the result store, the model runtime, the batcher.

Built lazily inside the worker process (engines and CUDA contexts must not cross a fork) and
shared by all task threads; the CLI builds them before consuming so a broken model fails fast.
"""

from __future__ import annotations

import os
import threading

import torch

from db import queries
from db.engine import is_sqlite, make_engine
from db.store import ResultStore
from newsq.settings import Settings, get_settings
from worker import heap, metrics, tuning
from worker.batch_policy import BatchPolicy
from worker.batcher import Batcher
from worker.completion import Completions
from worker.model import ModelRuntime, resolve_device
from worker.prefetch import InHand


class _Singletons:
    """Holder of the process-wide objects, guarded by one lock when they are built. Each
    accessor reads its object without the lock once built: classify calls several of them
    per message."""

    lock = threading.RLock()
    store: ResultStore | None = None
    batcher: Batcher | None = None
    completions: Completions | None = None
    in_hand: InHand | None = None


def store() -> ResultStore:
    if (built := _Singletons.store) is not None:
        return built
    with _Singletons.lock:
        if _Singletons.store is None:
            _Singletons.store = ResultStore(make_engine(get_settings().database_url))
        return _Singletons.store


def completions() -> Completions:
    """The thread that finishes classify messages once their rows are committed."""
    if (built := _Singletons.completions) is not None:
        return built
    with _Singletons.lock:
        if _Singletons.completions is None:
            _Singletons.completions = Completions(get_settings().task_timeout)
        return _Singletons.completions


def in_hand() -> InHand:
    """The prefetch credit of this worker's consumer, in articles (worker/prefetch.py)."""
    if (built := _Singletons.in_hand) is not None:
        return built
    with _Singletons.lock:
        if _Singletons.in_hand is None:
            settings = get_settings()
            threads = tuning_for(settings, resolve_device(settings.device).type).task_threads
            _Singletons.in_hand = InHand(settings.articles_in_hand, floor=threads)
        return _Singletons.in_hand


def tuning_for(settings: Settings, device_type: str) -> tuning.Tuning:
    return tuning.resolve(
        device_type,
        tuning.usable_cores(),
        token_budget=settings.token_budget,
        max_rows=settings.max_batch_rows,
        window_budgets=settings.window_budgets,
        model_threads=settings.model_threads,
        tokenizer_parallelism=settings.tokenizer_parallelism,
        task_threads=settings.concurrency,
        writers=settings.writers,
        sqlite=is_sqlite(settings.database_url),
    )


def policy_from(settings: Settings, tuned: tuning.Tuning, pad_multiple: int) -> BatchPolicy:
    return BatchPolicy(
        token_budget=tuned.token_budget,
        max_wait_s=settings.max_wait_ms / 1000,
        max_rows=tuned.max_rows,
        max_length=settings.max_length,
        pad_multiple=pad_multiple,
        window_budgets=tuned.window_budgets,
    )


def batcher() -> Batcher:
    """Load the promoted model (else NEWSQ_MODEL_DIR), register its version in SQL, start the
    pipeline threads (once)."""
    if (built := _Singletons.batcher) is not None:
        return built
    results = store()
    with _Singletons.lock:
        if _Singletons.batcher is None:
            settings = get_settings()
            tuned = tuning_for(settings, resolve_device(settings.device).type)
            # Read by the Rust tokenizer at each call; torch's pool is sized before its first
            # use, the warm-up pass in load().
            os.environ["TOKENIZERS_PARALLELISM"] = str(tuned.tokenizer_parallelism).lower()
            torch.set_num_threads(tuned.torch_threads)
            runtime = promoted_runtime(None) or load(settings.model_dir, settings.model_version)
            results.register_model_version(runtime.version, runtime.path)
            results.warm_up(tuned.writers)
            metrics.MODEL.info({"version": runtime.version, "device": str(runtime.device)})
            _Singletons.batcher = Batcher(
                runtime,
                results,
                policy_from(settings, tuned, runtime.pad_multiple),
                watch=newly_promoted,
                watch_interval_s=settings.reload_interval_s,
                model_threads=tuned.model_threads,
                writers=tuned.writers,
                in_hand=in_hand().messages,
            ).start()
        return _Singletons.batcher


def load(name_or_path: str, version: str | None) -> ModelRuntime:
    """The model, warmed up before it serves: on CUDA at the shapes it will meet most, on a CPU
    by one pass of one row (a first pass's one-time cost there, ~4 ms with the small model, is
    paid once, not per shape)."""
    settings = get_settings()
    runtime = ModelRuntime.load(
        name_or_path,
        device=settings.device,
        max_length=settings.max_length,
        version=version,
        tokenizer_dir=settings.tokenizer_dir,
        precision=settings.precision,
        cuda_graphs=settings.cuda_graphs,
    )
    tuned = tuning_for(settings, runtime.device.type)
    shapes = policy_from(settings, tuned, runtime.pad_multiple).warm_shapes()
    if runtime.device.type == "cuda":
        runtime.warm_up(shapes, every_row_bucket=settings.cuda_graphs_warmup == "all")
    else:
        runtime.warm_up(shapes[:1])
    return runtime


def promoted_runtime(current_version: str | None) -> ModelRuntime | None:
    """The promoted model, loaded, if it is not the one in use."""
    promoted = queries.promoted_version(store().engine)
    if promoted is None or promoted["version"] == current_version:
        return None
    return load(str(promoted["path"]), str(promoted["version"]))


def newly_promoted(serving_version: str) -> ModelRuntime | None:
    """The reload thread's watcher: a newly promoted model, loaded, with the heap frozen again
    so that what the load left behind stays out of the collector's walks (worker/heap.py; at
    the start the worker freezes once it is ready)."""
    fresh = promoted_runtime(serving_version)
    if fresh is not None:
        heap.freeze()
    return fresh


def shutdown() -> None:
    """Drain the batcher (the pool has already finished its tasks) and release the database."""
    with _Singletons.lock:
        if _Singletons.batcher is not None:
            _Singletons.batcher.close()
            _Singletons.batcher = None
        if _Singletons.store is not None:
            _Singletons.store.engine.dispose()
            _Singletons.store = None


def describe() -> dict[str, object]:
    """What `newsq status` shows of this worker (answers the `newsq_info` control command)."""
    settings = get_settings()
    loaded = _Singletons.batcher
    return {
        "pid": os.getpid(),
        "device": str(loaded.runtime.device) if loaded else settings.device,
        "model_version": loaded.runtime.version if loaded else None,
        "metrics_port": settings.metrics_port or None,
    }
