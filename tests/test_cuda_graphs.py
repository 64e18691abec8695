"""CUDA graphs of the forward pass: the row buckets (pure), and on a CUDA machine the replayed
probabilities against the eager ones (benchmarks/gpu.sh runs this file there; CI has no GPU)."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from newsq.settings import Precision
from tests.helpers import freed_by_reference_count, warmed
from worker.batch_policy import BatchPolicy
from worker.cuda_graphs import (
    ROW_STEP,
    Forward,
    ShapeTally,
    every_row_bucket,
    graph_rows,
    largest_first,
)
from worker.model import ModelRuntime


def test_small_batches_round_up_to_a_power_of_two() -> None:
    assert [graph_rows(n) for n in (1, 2, 3, 5, 64, 65, 128)] == [1, 2, 4, 8, 64, 128, 128]


def test_large_batches_round_up_to_a_whole_step() -> None:
    assert [graph_rows(n) for n in (129, 256, 257, 1365, 2048)] == [256, 256, 384, 1408, 2048]


def test_a_bucket_holds_its_batch_and_wastes_less_than_a_step() -> None:
    for rows in range(1, 2049):
        bucket = graph_rows(rows)
        assert rows <= bucket < rows + max(ROW_STEP, rows)
        assert graph_rows(bucket) == bucket  # a bucket is its own bucket


def test_every_row_bucket_covers_each_batch_a_plan_of_the_shapes_can_cut() -> None:
    policy = BatchPolicy(
        token_budget=32768, max_wait_s=0.02, max_rows=2048, max_length=64, pad_multiple=8
    )
    shapes = every_row_bucket(policy.warm_shapes())
    assert len(shapes) == len(set(shapes)) == 129  # the count cuda_graphs' docstring gives
    widths = {width: full for full, width in policy.warm_shapes()}  # last: the full budget
    for width, full in widths.items():
        held = {rows for rows, w in shapes if w == width}
        assert {graph_rows(n) for n in range(1, full + 1)} == held
    assert (1408, 24) in shapes and (2048, 8) in shapes and (1536, 24) not in shapes
    assert every_row_bucket([(3, 16), (1, 16), (200, 8)]) == [
        (1, 16), (2, 16), (4, 16), (1, 8), (2, 8), (4, 8), (8, 8), (16, 8), (32, 8), (64, 8),
        (128, 8), (256, 8),
    ]  # fmt: skip


def test_captures_go_largest_graph_first() -> None:
    shapes = [(1, 8), (300, 16), (2048, 8), (5, 64), (256, 24)]
    # graph rows x width: 8, 384 x 16 = 6,144, 16,384, 512, 6,144 (ties keep their order)
    assert largest_first(shapes) == [(2048, 8), (300, 16), (256, 24), (5, 64), (1, 8)]


def test_a_shape_is_captured_when_met_again_while_there_is_room() -> None:
    tally = ShapeTally(capture_at=2, max_graphs=2)
    assert not tally.due((128, 24), held=0)  # first meeting: eager
    assert not tally.due((256, 24), held=0)
    assert tally.due((128, 24), held=0)  # second: capture
    tally.captured((128, 24))
    assert tally.due((256, 24), held=1)
    tally.captured((256, 24))
    assert not tally.due((384, 24), held=2) and not tally.due((384, 24), held=2)  # full
    assert tally.missed == {(384, 24): 2}


def test_capture_at_one_captures_every_shape_at_once() -> None:
    assert ShapeTally(capture_at=1).due((1, 16), held=0)


def test_cpu_runtime_ignores_cuda_graphs(small_model: Path) -> None:
    runtime = ModelRuntime.load(str(small_model), device="cpu", cuda_graphs=True)
    batch = runtime.collate(runtime.encode([("央行宣布降准", None), ("球队夺冠", None)]), [0, 1])
    assert runtime.predict(batch).shape == (2, 10)
    assert runtime.graphs == 0


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda_only
def test_captured_graphs_hold_no_activations(small_model: Path) -> None:
    """Warm-up captures outside the forward pass's inference mode: a graph that kept autograd's
    saved activations grew an H200 worker by about 1 GB a graph until 8 workers ran out."""
    runtime = ModelRuntime.load(str(small_model), device="cuda", precision="fp32")
    runtime.warm_up([(64, 16)])  # the first capture also makes the library workspaces
    before = torch.cuda.memory_allocated()
    runtime.warm_up([(256, 32), (512, 16), (128, 64), (384, 24)])
    assert runtime.graphs == 5
    # static inputs and outputs only: ~1 MB; with activations ~100 MB a graph
    assert torch.cuda.memory_allocated() - before < 16 * 2**20


@cuda_only
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_replayed_graphs_match_the_eager_forward(small_model: Path, precision: Precision) -> None:
    """Random titles of random lengths, batch sizes inside and across buckets, each bucket
    replayed with fewer rows than it was captured with (stale padding rows must not leak). A
    shape runs eagerly when first met and is captured when met again; warm-up captures at once."""
    model, device = str(small_model), "cuda"
    eager = ModelRuntime.load(model, device=device, cuda_graphs=False, precision=precision)
    graphed = ModelRuntime.load(model, device=device, cuda_graphs=True, precision=precision)
    graphed.warm_up([(5, 16)])
    assert graphed.graphs == 1  # rows 5 -> 8
    rng = np.random.default_rng()
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    pairs = [("".join(rng.choice(chars, rng.integers(1, 40))), None) for _ in range(600)]
    encoded = graphed.encode(pairs)
    tolerance = 1e-4 if precision == "fp32" else 2e-2
    met: Counter[tuple[int, int]] = Counter()
    for rows in (300, 1, 3, 130, 257, 129, 600, 2) * 2:
        picked = rng.choice(len(pairs), rows, replace=False).tolist()
        batch = graphed.collate(encoded, picked)
        np.testing.assert_allclose(graphed.predict(batch), eager.predict(batch), atol=tolerance)
        met[graph_rows(rows), batch.input_ids.shape[1]] += 1
    # The warm-up's graph and one per shape met twice: at least the large batches' (384, 256 and
    # 640 rows, ~48 wide); whether a small one's width recurs is up to the random titles.
    again = {shape for shape, times in met.items() if times >= 2} - {(8, 16)}
    assert len(again) >= 3 and graphed.graphs == 1 + len(again) and eager.graphs == 0


@cuda_only
def test_warm_up_of_every_row_bucket_leaves_no_batch_to_run_eagerly(small_model: Path) -> None:
    """With every row bucket captured at warm-up, batches of any size up to a width's full
    rows replay a graph from their first meeting and match the eager forward pass."""
    model = str(small_model)
    eager = ModelRuntime.load(model, device="cuda", cuda_graphs=False, precision="fp32")
    graphed = ModelRuntime.load(model, device="cuda", precision="fp32")
    shapes = [(300, 48), (300, 56), (300, 64)]
    graphed.warm_up(shapes, every_row_bucket=True)
    assert graphed.graphs == len(every_row_bucket(shapes)) == 30
    eager_passes: list[tuple[int, ...]] = []
    forward = graphed._forward

    def counted(ids: torch.Tensor, types: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        eager_passes.append(tuple(ids.shape))  # the graphs hold the pass they were made with
        return forward(ids, types, mask)

    graphed._forward = counted
    rng = np.random.default_rng()
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    # 46-62 tokens with [CLS] and [SEP]: widths 48, 56 or 64
    pairs = [("".join(rng.choice(chars, rng.integers(44, 61))), None) for _ in range(300)]
    encoded = graphed.encode(pairs)
    for rows in (300, 1, 3, 130, 257, 129, 2, 77):
        batch = graphed.collate(encoded, rng.choice(300, rows, replace=False).tolist())
        np.testing.assert_allclose(graphed.predict(batch), eager.predict(batch), atol=1e-4)
    assert graphed.graphs == 30 and eager_passes == []


@cuda_only
def test_a_promoted_model_captures_its_graphs_while_the_serving_one_runs(
    small_model: Path,
) -> None:
    """A promotion loads the new model in the reload thread (worker/reload.py) while the model
    thread runs the serving model, which captures the shapes it meets again
    (NEWSQ_CUDA_GRAPHS_WARMUP=common): no capture may fail (a failure turns graphs off for
    good) and no result may differ."""
    model = str(small_model)
    eager = ModelRuntime.load(model, device="cuda", cuda_graphs=False, precision="fp32")
    serving = ModelRuntime.load(model, device="cuda", precision="fp32")
    shapes = [(300, 48), (300, 56), (300, 64)]
    serving.warm_up(shapes)  # the common shapes only: the rest is captured as met
    rng = np.random.default_rng()
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    pairs = [("".join(rng.choice(chars, rng.integers(44, 61))), None) for _ in range(300)]
    encoded = serving.encode(pairs)
    batches = [
        serving.collate(encoded, rng.choice(300, rows, replace=False).tolist())
        for rows in (1, 3, 130, 257, 129, 2, 77)
    ]
    expected = [eager.predict(batch) for batch in batches]
    promoted = ModelRuntime.load(model, device="cuda", precision="fp32")
    loader = threading.Thread(
        target=promoted.warm_up, args=(shapes,), kwargs={"every_row_bucket": True}
    )
    loader.start()
    rounds = 0
    while loader.is_alive() or rounds < 2:  # a shape is captured when met the second time
        for batch, probs in zip(batches, expected, strict=True):
            np.testing.assert_allclose(serving.predict(batch), probs, atol=1e-4)
        rounds += 1
    loader.join()
    assert promoted.graphs == 30
    assert serving.graphs > 3  # it captured what it met again
    eager_passes = []
    for runtime in (serving, promoted):
        forward = runtime._forward

        def counted(
            ids: torch.Tensor, types: torch.Tensor, mask: torch.Tensor, forward: Forward = forward
        ) -> torch.Tensor:
            eager_passes.append(tuple(ids.shape))
            return forward(ids, types, mask)

        runtime._forward = counted
        for batch, probs in zip(batches, expected, strict=True):
            np.testing.assert_allclose(runtime.predict(batch), probs, atol=1e-4)
    assert eager_passes == []  # every batch replayed a graph: no capture had failed


@cuda_only
def test_a_runtime_with_graphs_holds_no_reference_cycle(small_model: Path) -> None:
    """Its graphs hold the forward pass, not the runtime: a runtime replaced by a promotion,
    frozen out of the garbage collector, frees its weights and graphs with its last batch."""
    assert freed_by_reference_count(lambda: warmed(str(small_model), "cuda", [(4, 16)]))
