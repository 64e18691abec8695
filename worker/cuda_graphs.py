"""The forward pass replayed as CUDA graphs, one per batch shape, instead of launched op by op.

Why: on the H200 a newsq worker kept the GPU 20-70% busy while the bare loop kept it 98-100%
busy. An eager bert-base forward pass is some 400 kernel launches, each a few Python calls, and
in a worker the model thread shares the interpreter lock with the tokenizer, the writer and
Celery's threads: a 1,250-row pass took 94 ms there against 29 ms in the bare loop (py-spy,
README). A graph replays all of a pass's kernels from one call, so the GPU no longer waits for
the lock between them.

A graph is fixed to the shapes it was captured with: batches are padded up to a row bucket
(`graph_rows`) and keep their padded width (a multiple of 8, at most `max_length`). By default
every row bucket up to a full budget at every width is captured at warm-up (`every_row_bucket`):
under load, the last batch of each window is cut short at any size, and when those shapes were left
to be captured as they came (a shape ran eagerly when first met, ~45 ms of the worker's
interpreter, and was captured when met again, ~105 ms), first passes and captures were 17% of the
model thread of 8 processes sharing an H200 and about 30% of one process's (py-spy); with every
bucket captured first, none was left (H200, 2026-11-27: 129 graphs in ~15 s a worker). With
NEWSQ_CUDA_GRAPHS_WARMUP=common (a shorter start), only the light-load and full-budget shapes are
captured at warm-up and any other runs eagerly until it is met a second time. All graphs draw their
scratch memory from one pool: they never run at the same time (one lock), so the pool needs about
one forward pass's working memory, not one per graph (by design; a bert-base worker holding its 129
graphs used 6.6 GB of the H200's memory, its CUDA context, weights and warm-up stream's cache
included).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from worker import metrics

log = logging.getLogger(__name__)

ROW_STEP = 128  # above this, rows are padded to a multiple of it; below, to a power of two
MAX_GRAPHS = 256  # shapes past this many run eagerly
CAPTURE_AT = 2  # a shape met this many times is captured (warm-up shapes at once)

# One capture at a time in a process: during a promotion the new model captures in the reload
# thread (worker/reload.py) while the serving one may capture a shape it meets again
# (NEWSQ_CUDA_GRAPHS_WARMUP=common), and two captures at once would share torch.cuda.graph's one
# default capture stream, each synchronizing the device as it begins while the other captures.
_CAPTURING = threading.Lock()

# (input_ids, token_type_ids, attention_mask) on the device -> float32 probabilities there
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def graph_rows(rows: int, step: int = ROW_STEP) -> int:
    """The row count of the graph a batch of `rows` runs in.

    Padding rows cost arithmetic, and every bucket costs a capture: powers of two up to `step`
    keep the small batches of light load cheap (1 row stays 1 row), multiples of `step` above
    it waste at most `step` - 1 rows of a batch of hundreds while a GPU worker's shapes stay
    within a few dozen."""
    if rows <= step:
        return 1 << max(rows - 1, 0).bit_length()
    return -(-rows // step) * step


def every_row_bucket(shapes: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """(graph rows, width) of every bucket a batch can fall in, at each width of `shapes`, up to
    the most rows `shapes` has at that width: what a batch plan of those full batches can cut.

    The bert-base default (a budget of 32,768 tokens, up to 2,048 rows, widths 8-64) gives 129
    shapes."""
    most: dict[int, int] = {}
    for rows, width in shapes:
        most[width] = max(rows, most.get(width, 0))
    return [
        (bucket, width)
        for width, rows in most.items()
        for bucket in sorted({graph_rows(n) for n in range(1, rows + 1)})
    ]


def largest_first(shapes: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The order to capture `shapes` in: by their graph's rows x width, largest first, so that
    each capture after the first can draw its scratch memory from blocks a larger one freed in
    the shared pool instead of growing it (vLLM captures its batch sizes in reverse for this).
    Captured smallest first, 129 bert-base graphs took a worker to 6.6 GB of GPU memory on the
    H200; the difference this order makes is not yet measured."""
    return sorted(shapes, key=lambda shape: graph_rows(shape[0]) * shape[1], reverse=True)


@dataclass(slots=True)
class ShapeTally:
    """Which shapes to capture: the pure part of CudaGraphs, tested without a GPU.

    A shape is captured when it is met for the `capture_at`-th time (warm-up shapes at once),
    and not at all once `max_graphs` are held; `missed` counts the meetings until then."""

    capture_at: int = CAPTURE_AT
    max_graphs: int = MAX_GRAPHS
    missed: Counter[tuple[int, int]] = field(default_factory=Counter)

    def due(self, key: tuple[int, int], held: int) -> bool:
        """`key` was met and has no graph yet; whether to capture it now."""
        self.missed[key] += 1
        return self.missed[key] >= self.capture_at and self.room(held)

    def room(self, held: int) -> bool:
        return held < self.max_graphs

    def captured(self, key: tuple[int, int]) -> None:
        self.missed.pop(key, None)


@dataclass(slots=True)
class _Graph:
    graph: torch.cuda.CUDAGraph
    planes: torch.Tensor  # static [3, rows, width] inputs: copied into per batch
    probs: torch.Tensor  # static: written by each replay


class CudaGraphs:
    """Captures and replays `forward` per (graph rows, width) on one CUDA device."""

    def __init__(self, forward: Forward, device: torch.device, tally: ShapeTally | None = None):
        self._forward = forward
        self._device = device
        self._tally = tally or ShapeTally()
        self._pool = torch.cuda.graph_pool_handle()
        # The warm-up passes' stream: one for all, since each stream that runs a matrix product
        # gets a cuBLAS workspace of its own that is kept for good.
        self._side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._lock = threading.Lock()
        self._enabled = True  # until a capture fails

    def __len__(self) -> int:
        return len(self._graphs)

    def capture(self, shapes: Iterable[tuple[int, int]]) -> None:
        """Capture the graphs for batches of these (rows, width) now (warm-up), largest first,
        as many as can be held."""
        with self._lock:
            for rows, width in largest_first(shapes):
                if self._tally.room(len(self._graphs)):
                    self._held(graph_rows(rows), width)

    def run(self, planes: torch.Tensor) -> np.ndarray | None:
        """Probabilities of the batch's rows (its [3, rows, width] input planes on the CPU in,
        numpy out), or None where it runs eagerly: a shape met for the first time, capture
        failed once (then never again) or too many shapes are held. One copy in, the replay and
        one copy out: each lets go of the interpreter lock, and taking it back can wait for
        another thread's switch interval (5 ms)."""
        _, rows, width = planes.shape
        key = (graph_rows(rows), width)
        with self._lock:
            entry = self._graphs.get(key)
            if entry is None and self._tally.due(key, len(self._graphs)):
                entry = self._held(*key)
            if entry is None:
                return None
            entry.planes[:, :rows].copy_(planes, non_blocking=True)
            entry.graph.replay()
            return entry.probs[:rows].cpu().numpy()

    def _held(self, rows: int, width: int) -> _Graph | None:
        """The graph of this shape, captured now if need be (called under the lock, once the
        tally left room for it)."""
        key = (rows, width)
        if key not in self._graphs:
            if not self._enabled:
                return None
            entry = self._capture(rows, width)
            if entry is None:
                return None
            self._graphs[key] = entry
            self._tally.captured(key)
        return self._graphs[key]

    def _capture(self, rows: int, width: int) -> _Graph | None:
        """One eager pass on a side stream first (the CUDA docs' warm-up: library handles and
        workspaces are made outside the graph), then the capture. The padding rows attend to
        their first position only: a row that attends to nothing has no defined softmax."""
        started = time.perf_counter()
        # Inference mode here, whoever calls: with autograd on, the graph's output would keep
        # every activation for a backward pass (on the H200, warm-up captures made outside it
        # grew a worker by ~1 GB a graph, to 25-34 GB, and 8 workers ran out of memory).
        try:
            with torch.inference_mode():
                planes = torch.zeros((3, rows, width), dtype=torch.int64, device=self._device)
                planes[2, :, 0] = 1  # the attention mask
                self._side.wait_stream(torch.cuda.current_stream(self._device))
                with torch.cuda.stream(self._side):
                    self._forward(*planes)
                torch.cuda.current_stream(self._device).wait_stream(self._side)
                graph = torch.cuda.CUDAGraph()
                with (
                    _CAPTURING,
                    torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"),
                ):
                    probs = self._forward(*planes)
        except Exception:
            self._enabled = False
            log.warning(
                "capturing the forward pass as a CUDA graph failed (%d x %d); running it eagerly"
                " from now on (NEWSQ_CUDA_GRAPHS=false skips the attempt)",
                rows,
                width,
                exc_info=True,
            )
            return None
        seconds = time.perf_counter() - started
        metrics.CUDA_GRAPH_CAPTURE_SECONDS.observe(seconds)
        log.debug("captured a CUDA graph for %d x %d in %.0f ms", rows, width, 1000 * seconds)
        return _Graph(graph, planes, probs)
