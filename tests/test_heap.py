"""The worker's garbage-collector settings: the long-lived heap frozen once it is ready."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from sqlalchemy import Engine

from db.queries import committed_count
from producer.client import NewsClient
from tests.conftest import WorkerFactory
from tests.helpers import titles, wait_until

# Run in a fresh interpreter: freezing and new thresholds would outlive the test in this one.
FREEZE = textwrap.dedent(
    """
    import gc, weakref
    from worker import heap

    class Node:
        pass

    garbage = Node(); garbage.self = garbage  # a cycle: only the collector frees it
    dead = weakref.ref(garbage); del garbage
    kept = Node(); kept.self = kept
    alive = weakref.ref(kept)
    plain = Node()
    freed = weakref.ref(plain)

    heap.freeze()
    assert dead() is None, "garbage left when the heap was frozen"
    assert not any(o is kept for o in gc.get_objects()), "not frozen: still walked"
    assert gc.get_threshold() == heap.THRESHOLDS
    gc.collect()
    assert alive() is kept, "a frozen object was collected"
    del plain
    assert freed() is None, "a frozen object outlived its last reference"
    print("ok")
    """
)


def test_freeze_collects_then_keeps_the_rest_out_of_the_collector() -> None:
    done = subprocess.run(
        [sys.executable, "-c", FREEZE],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_worker_freezes_its_heap_once_ready(
    start_worker: WorkerFactory, engine: Engine, clean_redis: str
) -> None:
    worker = start_worker()
    articles = titles(50, "heap")
    with NewsClient(clean_redis) as client:
        client.enqueue(articles)
    wait_until(lambda: committed_count(engine, [a[0] for a in articles]) == 50)
    assert worker.log_path is not None
    log = worker.log_path
    wait_until(lambda: "long-lived objects out of the garbage collector" in log.read_text())
