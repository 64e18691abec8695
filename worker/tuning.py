"""Throughput defaults that depend on the device and the number of cores.

`resolve` is pure: the caller passes the device type and the cores it may use, so it is
unit-tested without either. Measured on 2 CPU cores with the small model (benchmarks/run, README):

* Two forward passes side by side with one torch thread each beat one pass on two threads when
  the cores are shared with tokenizing, writing and Celery (about 1,420 vs 1,330 articles/s):
  the threads of one pass wait at every operator for the slowest of them.
* A token budget of 4,096 (about 180 titles a batch) beat 8,192 (1,330 vs 1,090 articles/s):
  on a CPU a larger batch gains nothing and falls out of cache.
* A window of 16 budgets (the articles already waiting when a window closes, sorted by length
  and cut into batches): the more a window holds, the closer in length the rows of each batch
  and the less padding. Small model, PostgreSQL, 4 interleaved pairs, 4 -> 8 budgets: 153 -> 187
  rows a batch, fill 0.912 -> 0.943, 773/805/849/856 -> 829/834/918/860 articles/s; then
  8 -> 16 (median of 3 rounds each, against the bare ceiling of the same run): fill 0.943 ->
  0.965, SQLite 1,051 -> 1,117/s (0.89 -> 0.92 of bare), PostgreSQL 1,055 -> 1,099/s (0.90 ->
  0.91). 32 filled 0.975 with no further gain measured. The null model (no forward pass, the
  window thread its slowest stage) lost a little: 18,331/18,417 -> 17,851/17,126 articles/s.
  A window is taken only from what is already waiting, so light load is not delayed; on a CPU
  tokenizing one (~3,000 titles, ~80 ms) is short beside the forward passes it feeds (~350 ms
  each, two at a time).
* The tokenizer's own thread pool (Rust, rayon) spins while it waits; on a CPU worker its cores
  are the model's, and turning it off raised the null-model pipeline from ~10,200 to ~11,500
  articles/s. On CUDA it stays on, a thread per core in each process even when 8 processes
  share the 16 cores of the H200 machine: capping each at 2 threads was no faster (bert-base,
  PostgreSQL: 48,748 against 51,289 articles/s) and its windows took longer to tokenize.
* 8 task threads: a classify task no longer holds its thread while its rows are on their way
  (worker/completion.py), so a few threads take every message in hand, and the messages in hand
  follow the prefetch credit, sized by articles (worker/prefetch.py). When each message held a
  thread, 128 threads beat 64 with one-article messages (small model: 380/407 -> 552/557
  articles/s), at batches of ~21 rows; a credit by articles let batches grow to 85 rows
  (small model, one-article messages, 5,000: 218 -> 321 articles/s, sustained 238 -> 522; null
  model, 2 processes: 684/778 -> 1,183/1,403, on a day this machine ran at half its speed).

On CUDA the model runs on the GPU: one model thread (one stream), the tokenizer free to use the
idle cores. An eager GPU batch of titles is bound by kernel launches, not
arithmetic, until it is large: measured on one H200 with the bert-base shape in bf16
(benchmarks/gpu.sh), 20,500 articles/s at batch 256, 35,600 at 512, 52,400 at 1,024, and 23,900
with a budget of 8,192 tokens (~400 rows): hence a budget of 32,768 tokens and up to 2,048 rows.
Replayed as CUDA graphs (worker/cuda_graphs.py) small batches cost far less (66,530 at 256, 75,703
at 1,024, 77,830 at 2,048), and the large budget still gives the best rate with the fewest batch
shapes to capture. Windows stay at 4 budgets there, as measured: the GPU waits while the tokenizer
cuts the next window, so a longer window is a longer wait (not yet measured on a GPU; room for a
whole window's batches ahead of the forward pass, so that the next is tokenized meanwhile, gained
nothing with 8 processes: 45,618 vs 45,642 articles/s, H200, 2026-11-28).

Two write threads on CUDA with PostgreSQL: one bert-base process's single writer was busy all the
time (0.93) and two raised it from 14,477 to 21,356 articles/s (H200, 2026-11-28); with 8
processes 56,505 against 55,029. On 2 CPU cores two writers were no faster (995 vs 1,066/s), and
SQLite lets one writer in at a time, so one there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

CPU_TOKEN_BUDGET = 4096
CUDA_TOKEN_BUDGET = 32768
CPU_MAX_ROWS = 512
CUDA_MAX_ROWS = 2048
CPU_WINDOW_BUDGETS = 16
CUDA_WINDOW_BUDGETS = 4
TASK_THREADS = 8
CUDA_WRITERS = 2


@dataclass(frozen=True, slots=True)
class Tuning:
    token_budget: int
    max_rows: int  # of one batch
    window_budgets: int  # a window holds up to this many token budgets (BatchPolicy)
    model_threads: int  # forward passes running side by side
    torch_threads: int  # intra-op threads of each
    tokenizer_parallelism: bool
    task_threads: int  # Celery's thread pool (messages in hand: worker/prefetch.py)
    writers: int  # write threads, each on a connection of its own


def resolve(
    device_type: str,
    cores: int,
    *,
    token_budget: int | None = None,
    max_rows: int | None = None,
    window_budgets: int | None = None,
    model_threads: int | None = None,
    tokenizer_parallelism: bool | None = None,
    task_threads: int | None = None,
    writers: int | None = None,
    sqlite: bool = False,
) -> Tuning:
    """Fill what the settings leave unset (None) with the measured defaults above; `sqlite`:
    the results go to SQLite, which lets one writer in at a time."""
    cuda = device_type == "cuda"
    threads = model_threads or (1 if cuda else max(1, cores))
    return Tuning(
        token_budget=token_budget or (CUDA_TOKEN_BUDGET if cuda else CPU_TOKEN_BUDGET),
        max_rows=max_rows or (CUDA_MAX_ROWS if cuda else CPU_MAX_ROWS),
        window_budgets=window_budgets or (CUDA_WINDOW_BUDGETS if cuda else CPU_WINDOW_BUDGETS),
        model_threads=threads,
        torch_threads=max(1, cores // threads),
        tokenizer_parallelism=cuda if tokenizer_parallelism is None else tokenizer_parallelism,
        task_threads=task_threads or TASK_THREADS,
        writers=writers or (CUDA_WRITERS if cuda and not sqlite else 1),
    )


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    return len(os.sched_getaffinity(0))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` torch intra-op threads, then restore the process's setting
    (one process-wide pool: a training run beside a classify batcher, or a benchmark loop)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
