"""The device- and core-dependent throughput defaults."""

from __future__ import annotations

import torch

from worker.tuning import (
    CPU_MAX_ROWS,
    CPU_TOKEN_BUDGET,
    CUDA_MAX_ROWS,
    CUDA_TOKEN_BUDGET,
    Tuning,
    resolve,
    torch_threads,
)


def test_a_cpu_worker_runs_one_single_threaded_forward_pass_per_core() -> None:
    assert resolve("cpu", 2) == Tuning(
        token_budget=CPU_TOKEN_BUDGET,
        max_rows=CPU_MAX_ROWS,
        model_threads=2,
        torch_threads=1,
        tokenizer_parallelism=False,
    )


def test_a_cuda_worker_runs_one_forward_pass_and_lets_the_tokenizer_use_the_cores() -> None:
    assert resolve("cuda", 16) == Tuning(
        token_budget=CUDA_TOKEN_BUDGET,
        max_rows=CUDA_MAX_ROWS,
        model_threads=1,
        torch_threads=16,
        tokenizer_parallelism=True,
    )


def test_settings_override_every_default() -> None:
    tuned = resolve(
        "cpu", 8, token_budget=1000, max_rows=64, model_threads=2, tokenizer_parallelism=True
    )
    assert tuned == Tuning(
        token_budget=1000, max_rows=64, model_threads=2, torch_threads=4, tokenizer_parallelism=True
    )


def test_more_model_threads_than_cores_still_get_one_torch_thread() -> None:
    assert resolve("cpu", 2, model_threads=4).torch_threads == 1


def test_torch_threads_sets_the_pool_for_the_block_and_restores_it() -> None:
    before = torch.get_num_threads()
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
