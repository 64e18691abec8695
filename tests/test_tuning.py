"""The device- and core-dependent throughput defaults."""

from __future__ import annotations

import torch

from newsq.settings import Settings
from worker.services import policy_from, tuning_for
from worker.tuning import (
    CPU_MAX_ROWS,
    CPU_TOKEN_BUDGET,
    CPU_WINDOW_BUDGETS,
    CUDA_MAX_ROWS,
    CUDA_TOKEN_BUDGET,
    CUDA_WINDOW_BUDGETS,
    CUDA_WRITERS,
    TASK_THREADS,
    Tuning,
    resolve,
    torch_threads,
)


def test_a_cpu_worker_runs_one_single_threaded_forward_pass_per_core() -> None:
    assert resolve("cpu", 2) == Tuning(
        token_budget=CPU_TOKEN_BUDGET,
        max_rows=CPU_MAX_ROWS,
        window_budgets=CPU_WINDOW_BUDGETS,
        model_threads=2,
        torch_threads=1,
        tokenizer_parallelism=False,
        task_threads=TASK_THREADS,
        writers=1,
    )


def test_a_cuda_worker_runs_one_forward_pass_and_lets_the_tokenizer_use_the_cores() -> None:
    assert resolve("cuda", 16) == Tuning(
        token_budget=CUDA_TOKEN_BUDGET,
        max_rows=CUDA_MAX_ROWS,
        window_budgets=CUDA_WINDOW_BUDGETS,
        model_threads=1,
        torch_threads=16,
        tokenizer_parallelism=True,
        task_threads=TASK_THREADS,
        writers=CUDA_WRITERS,
    )


def test_settings_override_every_default() -> None:
    tuned = resolve(
        "cpu",
        8,
        token_budget=1000,
        max_rows=64,
        window_budgets=2,
        model_threads=2,
        tokenizer_parallelism=True,
        task_threads=16,
        writers=3,
    )
    assert tuned == Tuning(
        token_budget=1000,
        max_rows=64,
        window_budgets=2,
        model_threads=2,
        torch_threads=4,
        tokenizer_parallelism=True,
        task_threads=16,
        writers=3,
    )


def test_more_model_threads_than_cores_still_get_one_torch_thread() -> None:
    assert resolve("cpu", 2, model_threads=4).torch_threads == 1


def test_torch_threads_sets_the_pool_for_the_block_and_restores_it() -> None:
    before = torch.get_num_threads()
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


def test_the_worker_builds_its_batch_policy_from_the_settings() -> None:
    settings = Settings(token_budget=1000, window_budgets=3, max_batch_rows=64, max_wait_ms=5)
    policy = policy_from(settings, tuning_for(settings, "cpu"), pad_multiple=8)
    assert policy.token_budget == 1000 and policy.window_token_cap == 3000
    assert (policy.max_rows, policy.max_wait_s, policy.pad_multiple) == (64, 0.005, 8)


def test_task_threads_are_few_unless_told() -> None:
    """A task thread no longer waits for its rows: a few take every message in hand."""
    assert tuning_for(Settings(), "cpu").task_threads == TASK_THREADS
    assert tuning_for(Settings(), "cuda").task_threads == TASK_THREADS
    assert tuning_for(Settings(concurrency=3), "cpu").task_threads == 3


def test_a_cuda_worker_writes_on_two_connections_unless_its_database_is_sqlite() -> None:
    """One bert-base process's single writer was its busiest stage; SQLite takes one writer."""
    assert tuning_for(Settings(database_url="postgresql+psycopg://h/db"), "cuda").writers == 2
    assert tuning_for(Settings(database_url="sqlite:///newsq.db"), "cuda").writers == 1
    assert tuning_for(Settings(database_url="postgresql+psycopg://h/db"), "cpu").writers == 1
    assert tuning_for(Settings(writers=3, database_url="sqlite:///n.db"), "cpu").writers == 3
