"""Throughput and latency of newsq against the bare model and a naive worker, in one run.

    benchmarks/run                      # the CPU set: null + small model, SQLite + PostgreSQL
    benchmarks/run --models null,small,base --device cuda   # what benchmarks/gpu.sh runs

Every figure comes from the same run on the same THUCNews titles, so the ratios hold on a noisy
machine. Prints a markdown table; writes benchmarks/results/pipeline.json (or --output).

* bare: the model alone, pre-tokenized length-sorted batches in a loop (no queue, no SQL).
* newsq: articles enqueued through NewsClient -> rows committed in SQL, by real `newsq worker`
  processes (`--processes`: one, or several sharing the device, as `--processes-per-gpu`
  starts them), with 256-article and 1-article messages.
* naive: benchmarks/naive_worker.py (one task, forward pass and commit per article).
* latency: one-article messages offered at a light, steady rate; enqueue -> committed row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import redis
import torch
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, select, text

from db.engine import make_engine
from db.migrate import upgrade
from db.models import Prediction
from newsq.settings import PRECISIONS, Settings
from producer.client import NewsClient, celery_client
from worker.cuda_graphs import graph_rows
from worker.launcher import WorkerProcess
from worker.model import Encoded, ModelRuntime
from worker.model_shapes import init_model
from worker.services import policy_from, tuning_for
from worker.tuning import torch_threads

ROOT = Path(__file__).resolve().parents[1]
# THUCNews titles and the bert-base-chinese tokenizer (benchmarks/gpu.sh points elsewhere)
DATA = Path(os.environ.get("NEWSQ_BENCH_DATA", ROOT.parent / "shared/data"))
METRICS_PORT = 9890
# The parts of a run (--steps): the bare model, newsq with 256-article messages, the same with
# the CUDA graphs off (1 process), with only the common graphs captured at start (the most
# processes), with 2 writers (1 process, CPU), with windows of 8 budgets (the most processes, CUDA),
# the naive worker, the null model, light-load latency, 1-article messages.
STEPS = (
    "bare",
    "newsq",
    "eager",
    "common",
    "writers",
    "window",
    "naive",
    "null",
    "latency",
    "single",
)
# Worker settings some cases change, by name: (what the table says, the environment).
VARIANTS = {
    # What an operator can turn off when one-article messages arrive by the thousand per
    # second: the three task events of each message, and INFO logging.
    "lean": (
        "events off, log WARNING",
        {"NEWSQ_TASK_EVENTS": "false", "NEWSQ_LOG_LEVEL": "WARNING"},
    ),
    # What the CUDA graphs of the forward pass buy end to end (worker/cuda_graphs.py).
    "eager": ("CUDA graphs off", {"NEWSQ_CUDA_GRAPHS": "false"}),
    # What capturing every row bucket at start-up buys against the common shapes alone.
    "common": ("common graphs at start", {"NEWSQ_CUDA_GRAPHS_WARMUP": "common"}),
    # A second write thread (NEWSQ_WRITERS), for a process whose write stage is always busy: the
    # default on CUDA with PostgreSQL, measured here on a CPU.
    "writers": ("2 writers", {"NEWSQ_WRITERS": "2"}),
    # Longer windows: fewer short last batches (fill) on CUDA, where windows hold 4 budgets.
    "window": ("windows of 8 budgets", {"NEWSQ_WINDOW_BUDGETS": "8"}),
}


@dataclass
class Case:
    """One measured line of the table."""

    kind: str  # bare | newsq | naive | latency
    model: str
    database: str = "-"
    per_message: int = 0
    processes: int = 1
    articles: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.articles / self.seconds if self.seconds else 0.0


def read_titles(count: int) -> list[str]:
    """THUCNews titles (train, dev, test), repeated when more are asked for than exist."""
    titles: list[str] = []
    for name in ("train.txt", "dev.txt", "test.txt"):
        with (DATA / "thucnews" / name).open(encoding="utf-8") as lines:
            titles += [line.split("\t", 1)[0] for line in lines if line.strip()]
    return [titles[i % len(titles)] for i in range(count)]


def make_model(shape: str, work: Path) -> str:
    """A model folder of `shape` (weights untrained: the speed is the same), or `null`."""
    if shape == "null":
        return "null"
    path = work / shape
    if not path.exists():
        init_model(shape, path, DATA / "bert-base-chinese")
    return str(path)


# -- 1. the bare model --------------------------------------------------------------------------
EAGER_PLAN = "newsq policy, eager"  # on CUDA: the same plan with the CUDA graphs off


def bare(model_dir: str, titles: list[str], device: str, sizes: list[int]) -> list[Case]:
    """Pre-tokenized, length-sorted batches through the model in a loop: fixed batch sizes and
    the plan of newsq's batch policy (its token budget), the latter also split over as many
    single-threaded loops as the worker runs model threads. The best of them is the ceiling."""
    settings = Settings()
    runtime = ModelRuntime.load(model_dir, device=device, max_length=settings.max_length)
    tuned = tuning_for(settings, runtime.device.type)
    encoded = runtime.encode([(t, None) for t in titles])
    order = sorted(range(len(titles)), key=encoded.lengths.__getitem__)
    plans = {
        f"batch {size}": [order[i : i + size] for i in range(0, len(order), size)] for size in sizes
    }
    by_length = [encoded.lengths[i] for i in order]
    policy = policy_from(settings, tuned, runtime.pad_multiple)
    plans["newsq policy"] = [[order[i] for i in rows] for rows in policy.plan(by_length)]
    # batch 1 is slow: a sample of the same titles is enough
    if "batch 1" in plans:
        plans["batch 1"] = plans["batch 1"][:: max(1, len(order) // 1000)]
    loops = {name: 1 for name in plans}
    if tuned.model_threads > 1:
        name = f"newsq policy, {tuned.model_threads} loops x {tuned.torch_threads} thread"
        plans[name], loops[name] = plans["newsq policy"], tuned.model_threads
    runtimes = {name: runtime for name in plans}
    if runtime.device.type == "cuda":  # what the defaults buy: the other choices, same plan
        variants: dict[str, dict[str, Any]] = {
            f"newsq policy, {p}": {"precision": p} for p in PRECISIONS if p != "auto"
        }
        variants.pop(f"newsq policy, {runtime.precision}")
        variants[EAGER_PLAN] = {"cuda_graphs": False}
        for name, options in variants.items():
            plans[name], loops[name] = plans["newsq policy"], 1
            runtimes[name] = ModelRuntime.load(
                model_dir, device=device, max_length=settings.max_length, **options
            )
    cases = []
    for name, batches in plans.items():
        used = runtimes[name]
        seconds, warm_s = timed(used, encoded, batches, loops[name], tuned.torch_threads)
        case = Case("bare", Path(model_dir).name, articles=sum(len(b) for b in batches))
        case.seconds = seconds
        case.extra = {
            "batching": name,
            "mean_rows": round(case.articles / len(batches), 1),
            "precision": used.precision,
            "cuda_graphs": used.graphs,
            "warm_s": round(warm_s, 2),  # one pass per shape before the timed loop
        }
        cases.append(case)
        print(f"  bare {case.model} {name} ({used.precision}): {case.rate:,.0f}/s", flush=True)
    if EAGER_PLAN in runtimes:
        cases[-1].extra["max_diff_vs_graphs"] = max_difference(
            runtime, runtimes[EAGER_PLAN], encoded, plans["newsq policy"][:8]
        )
    return cases


def max_difference(
    one: ModelRuntime, other: ModelRuntime, encoded: Encoded, batches: list[list[int]]
) -> float:
    """The largest difference between two runtimes' probabilities on the same batches."""
    return max(
        float(np.abs(one.predict(t) - other.predict(t)).max())
        for t in (one.collate(encoded, rows) for rows in batches)
    )


def timed(
    runtime: ModelRuntime, encoded: Encoded, batches: list[list[int]], loops: int, threads: int
) -> tuple[float, float]:
    """Seconds to predict every batch (collated beforehand), split over `loops` side-by-side
    loops of `threads` torch threads each (one loop: the process's own thread count), after one
    warm-up pass per batch shape (kernel choice; on CUDA the graph capture); and the warm-up's
    seconds."""
    tensors = [runtime.collate(encoded, rows) for rows in batches]
    shapes = {(graph_rows(t.input_ids.shape[0]), t.input_ids.shape[1]): t for t in tensors}
    with torch_threads(threads if loops > 1 else torch.get_num_threads()):
        started = time.perf_counter()
        for batch in shapes.values():
            runtime.predict(batch)
        sync(runtime.device)
        warm = time.perf_counter() - started
        started = time.perf_counter()
        shares = [tensors[part::loops] for part in range(loops)]
        with ThreadPoolExecutor(loops) as pool:
            list(pool.map(lambda share: [runtime.predict(b) for b in share], shares))
        sync(runtime.device)
        return time.perf_counter() - started, warm


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# -- services ------------------------------------------------------------------------------------
@contextmanager
def database(kind: str, work: Path, pg_url: str) -> Iterator[str]:
    """A fresh, migrated database: a SQLite file, or a PostgreSQL schema dropped afterwards."""
    if kind == "sqlite":
        url = f"sqlite:///{work / f'bench-{uuid.uuid4().hex[:8]}.db'}"
        upgrade(url)
        yield url
        return
    schema = f"newsq_bench_{uuid.uuid4().hex[:8]}"
    plain = pg_url.replace("+psycopg", "")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        # Flush what earlier cases wrote now, not as a checkpoint inside this case's timing.
        with suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("CHECKPOINT")
    try:
        # a socket URL (benchmarks/gpu.sh's own server) already has a query: ?host=...
        url = f"{pg_url}{'&' if '?' in pg_url else '?'}options=-csearch_path%3D{schema}"
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@contextmanager
def newsq_workers(
    redis_url: str,
    database_url: str,
    model_dir: str,
    args: Any,
    *,
    variant: str = "",
    processes: int = 1,
) -> Iterator[list[int]]:
    """Real `newsq worker` processes on an empty queue, with the settings of `variant` (one of
    VARIANTS, or none); yields their pids."""
    redis.Redis.from_url(redis_url).flushdb()
    workers = []
    name = f"bench-{uuid.uuid4().hex[:6]}"
    for index in range(processes):
        env = {
            **(VARIANTS[variant][1] if variant else {}),
            "NEWSQ_DATABASE_URL": database_url,
            "NEWSQ_MODEL_DIR": model_dir,
            "NEWSQ_TOKENIZER_DIR": str(DATA / "bert-base-chinese"),
            "NEWSQ_DEVICE": args.device,
            "NEWSQ_METRICS_PORT": str(METRICS_PORT + index),
        }
        log = args.work / "worker.log"
        workers.append(WorkerProcess(redis_url, env, name=f"{name}-{index}", log_path=log))
    try:
        for worker in workers:
            worker.start(timeout=None)
        for worker in workers:
            worker.wait_ready(120)
        yield [w.process.pid for w in workers if w.process is not None]
    finally:
        for worker in workers:
            worker.stop(timeout=60)


@contextmanager
def profiled(pid: int, folder: Path | None, name: str) -> Iterator[None]:
    """With --profile: py-spy samples of the worker's threads while the block runs, as folded
    stacks in `folder`/`name`.txt (where a GPU worker's time goes, with no profiler at hand)."""
    if folder is None or not name:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    command = [str(spy) if spy.exists() else "py-spy", "record", "--pid", str(pid), "--threads"]
    command += ["--nonblocking", "--format", "raw", "--output", str(folder / f"{name}.txt")]
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
        recorder.wait(60)


def wait_rows(
    engine: Engine, table: str, count: int, timeout: float, serial: str | None = None
) -> float:
    """perf_counter() when `table` first holds `count` rows.

    With `serial` (an autoincrement key, which grows by one per row when nothing conflicts), it
    polls max(serial), answered from the index at once, and counts only to confirm: a count(*)
    every 50 ms scans the table, which at 200k rows took PostgreSQL a third of a core away from
    the worker under test.
    """
    deadline = time.monotonic() + timeout
    counting = text(f"SELECT count(*) FROM {table}")
    polling = text(f"SELECT coalesce(max({serial}), 0) FROM {table}") if serial else counting
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(polling).scalar_one() >= count:
                reached = time.perf_counter()
                if polling is counting or conn.execute(counting).scalar_one() >= count:
                    return reached
                polling = counting  # keys were skipped: count from here on
        time.sleep(0.05)
    raise TimeoutError(f"{table} did not reach {count:,} rows in {timeout:.0f}s")


def sustained_rate(times: list[float], low: float = 0.2, high: float = 0.8) -> float | None:
    """Rows/s between the `low` and `high` fractions of `times` (when each row's write began):
    the rate with the pipeline full, without a case's start (the first windows wait out their
    wait and fill the stages one after another) and its tail (the last windows drain them). A
    short case of many processes spends much of its time in both (8 on the H200: ~25,000
    articles, ~6 windows each, ~4 s); the bare loop, timed over its batches alone, in neither."""
    ordered = sorted(times)
    first, last = (ordered[int(q * (len(ordered) - 1))] for q in (low, high))
    return (high - low) * len(ordered) / (last - first) if last > first else None


def write_times(engine: Engine, tag: str) -> list[float]:
    """When the write of each prediction of the articles tagged `tag` began (epoch seconds)."""
    query = select(Prediction.created_at).where(Prediction.article_id.like(f"{tag}-%"))
    with engine.connect() as conn:
        return [at.timestamp() for at in conn.execute(query).scalars()]


def articles_for(titles: list[str], tag: str) -> list[dict[str, str]]:
    return [{"id": f"{tag}-{i}", "title": title} for i, title in enumerate(titles)]


class Producers:
    """`count` producer processes (benchmarks/enqueue.py), each with an equal share of the
    articles in whole messages, started and connected before the clock starts."""

    def __init__(
        self,
        redis_url: str,
        articles: list[dict[str, str]],
        per_message: int,
        count: int,
        work: Path,
    ) -> None:
        self.total = len(articles)
        messages = [articles[i : i + per_message] for i in range(0, len(articles), per_message)]
        self.procs: list[subprocess.Popen[str]] = []
        for index in range(count):
            share = work / f"producer-{index}.json"
            mine = [a for message in messages[index::count] for a in message]
            share.write_text(json.dumps(mine, ensure_ascii=False), encoding="utf-8")
            command = [sys.executable, "-m", "benchmarks.enqueue", redis_url, str(per_message)]
            self.procs.append(
                subprocess.Popen(
                    [*command, str(share)],
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )

    def __enter__(self) -> Producers:
        for proc in self.procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"producer {proc.pid} failed to start (exit {proc.wait()})")
        return self

    def go(self) -> float:
        """Start them all; the perf_counter() of the start."""
        started = time.perf_counter()
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        return started

    def finish(self) -> dict[str, float]:
        """The articles/s of the enqueue (until the last producer is done) and the producers'
        CPU µs per article."""
        reports = []
        for proc in self.procs:
            out, _ = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"producer {proc.pid} exited {proc.returncode}")
            reports.append(json.loads(out))
        return {
            "enqueue_per_s": round(self.total / max(r["seconds"] for r in reports)),
            "client_cpu_us": round(1e6 * sum(r["cpu"] for r in reports) / self.total, 1),
        }

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# Servers on this machine whose CPU time a case reports, by process name (/proc/PID/stat).
SERVERS = {"postgres": "postgresql", "redis-server": "redis"}


@dataclass(frozen=True)
class CpuClock:
    """CPU time so far of the worker processes (all threads), of the database and broker
    servers, and of the whole machine (busy and all ticks, from /proc/stat)."""

    workers: float
    servers: dict[str, float]
    machine_busy: float
    machine_total: float

    @classmethod
    def read(cls, pids: list[int]) -> CpuClock:
        tick = os.sysconf("SC_CLK_TCK")
        workers = sum(cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) for pid in pids)
        servers = dict.fromkeys(SERVERS.values(), 0.0)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue  # the process is gone
            name = text.split("(", 1)[1].rsplit(")", 1)[0]
            if name in SERVERS:  # with reaped children: PostgreSQL's exited backends
                servers[SERVERS[name]] += cpu_ticks(text, children=True) / tick
        # cpu  user nice system idle iowait irq softirq steal ...
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        idle = ticks[3] + ticks[4]
        return cls(workers / tick, servers, sum(ticks) - idle, sum(ticks))

    def since(self, before: CpuClock, articles: int) -> dict[str, float]:
        """CPU µs per article of the workers and of each server, and how busy the machine's
        cores were: where a rate is bound by the cores (busy near 1) or by something that waits
        (well below), and which process the cores went to."""
        total = self.machine_total - before.machine_total
        servers = {
            f"{name}_cpu_us": round(1e6 * (seconds - before.servers[name]) / articles, 1)
            for name, seconds in self.servers.items()
        }
        return {
            "worker_cpu_us": round(1e6 * (self.workers - before.workers) / articles, 1),
            **servers,
            "cores_busy": round((self.machine_busy - before.machine_busy) / (total or 1), 3),
        }


def cpu_ticks(stat: str, children: bool = False) -> int:
    """utime + stime of a /proc/PID/stat's text (and cutime + cstime: its reaped children's)."""
    fields = stat.rsplit(")", 1)[1].split()  # from the state, field 3
    return sum(int(v) for v in fields[11 : 15 if children else 13])


# The worker's pipeline stages (worker/batcher.py) and the histogram of each one's busy time.
STAGES = {
    "prepare": "newsq_batch_prepare_seconds_sum",
    "forward": "newsq_batch_forward_seconds_sum",
    "write": "newsq_batch_write_seconds_sum",
}


def metric_values(processes: int) -> dict[str, float]:
    """The batch and CUDA-graph samples of the workers' /metrics, summed over the workers."""
    values: dict[str, float] = {}
    for index in range(processes):
        url = f"http://127.0.0.1:{METRICS_PORT + index}/metrics"
        body = urllib.request.urlopen(url, timeout=5).read()
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name.startswith(("newsq_batch", "newsq_cuda_graph")):
                    values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def stage_busy(
    before: dict[str, float], after: dict[str, float], seconds: float, processes: int
) -> dict[str, float]:
    """The share of the timed run each stage of a worker spent working, averaged over the
    workers: the prepare and write stages are one thread each, so near 1.0 is the bottleneck;
    forward passes run on `model_threads` threads side by side."""
    return {
        f"busy_{stage}": round(
            (after.get(name, 0.0) - before.get(name, 0.0)) / seconds / processes, 3
        )
        for stage, name in STAGES.items()
    }


def scrape(pids: list[int]) -> dict[str, Any]:
    """Batch statistics from the workers' /metrics (summed), and the largest peak RSS of them
    from /proc."""
    values = metric_values(len(pids))
    batches = values.get("newsq_batch_rows_count", 0.0) or 1.0
    peak_kib = max(
        int(line.split()[1])
        for pid in pids
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmHWM")
    )
    return {
        "batches": int(values.get("newsq_batch_rows_count", 0)),
        "mean_rows": round(values.get("newsq_batch_rows_sum", 0.0) / batches, 1),
        "fill": round(
            values.get("newsq_batch_tokens_total", 0.0)
            / (values.get("newsq_batch_padded_tokens_sum", 0.0) or 1.0),
            3,
        ),
        "forward_ms": round(1000 * values.get("newsq_batch_forward_seconds_sum", 0.0) / batches, 2),
        "write_ms": round(1000 * values.get("newsq_batch_write_seconds_sum", 0.0) / batches, 2),
        "writes": int(values.get("newsq_batch_write_seconds_count", 0)),  # transactions
        "peak_rss_mb": round(peak_kib / 1024),
        # warm-up included: each new batch shape is captured once, then replayed
        "cuda_graphs": int(values.get("newsq_cuda_graph_capture_seconds_count", 0)),
        "capture_s": round(values.get("newsq_cuda_graph_capture_seconds_sum", 0.0), 2),
    }


# -- 2. newsq end to end ---------------------------------------------------------------------
def newsq_run(
    model_dir: str,
    kind: str,
    per_message: int,
    titles: list[str],
    args: Any,
    *,
    variant: str = "",
    processes: int = 1,
) -> Case:
    """Enqueue through `--producers` NewsClient processes (`--warm-articles` first, from this
    one), time from their start until every row is committed."""
    with (
        database(kind, args.work, args.pg_url) as url,
        newsq_workers(
            args.redis_url, url, model_dir, args, variant=variant, processes=processes
        ) as pids,
        NewsClient(args.redis_url) as client,
    ):
        engine = make_engine(url)
        # --warm-articles per process; which worker takes which message is the broker's choice
        warm = articles_for(titles[: args.warm_articles * processes], "warm")
        client.enqueue(warm, chunk_size=min(args.warm_articles, 256))
        wait_rows(engine, "predictions", len(warm), args.timeout, serial="id")
        name = f"{Path(model_dir).name}-{kind}-x{processes}{variant and '-' + variant}"
        name = name if per_message > 1 else ""
        bench = articles_for(titles, "bench")
        with (
            Producers(args.redis_url, bench, per_message, args.producers, args.work) as producers,
            profiled(pids[0], args.profile, name),
        ):
            cpu_before, stages_before = CpuClock.read(pids), metric_values(processes)
            started = producers.go()
            total = len(warm) + len(titles)
            done = wait_rows(engine, "predictions", total, args.timeout, serial="id")
            cpu = CpuClock.read(pids).since(cpu_before, len(titles))
            stages = stage_busy(stages_before, metric_values(processes), done - started, processes)
            enqueue = producers.finish()
        case = Case("newsq", Path(model_dir).name, kind, per_message, processes, len(titles))
        case.seconds = done - started
        sustained = sustained_rate(write_times(engine, "bench"))
        case.extra = {
            "sustained_per_s": round(sustained) if sustained else None,
            "producers": args.producers,
            **enqueue,
            **cpu,
            **stages,
            "variant": variant,
            **scrape(pids),
        }
        engine.dispose()
    print(
        f"  newsq {case.model} {kind} {per_message}/msg x{processes} {variant}: "
        f"{case.rate:,.0f}/s {case.extra}",
        flush=True,
    )
    return case


def against_bare(
    model_dir: str, titles: list[str], databases: list[str], args: Any, run: Run
) -> list[Case]:
    """The bare model's cases and newsq's 256-article runs, interleaved for `--rounds` rounds;
    each case keeps its median round: on a shared machine the speed of both drifts by 10-20%
    from minute to minute, and a ratio of two single runs minutes apart inherits that. Each is
    a step of `run` of its own: past the budget the rest are skipped, and one that fails costs
    only itself (a GPU worker's start captures its graphs, ~20 s a case)."""
    steps: list[tuple[str, Callable[[], Case | list[Case]]]] = []
    if "bare" in args.steps:
        ceiling_titles = titles[: args.model_articles]
        steps.append(
            ("bare", partial(bare, model_dir, ceiling_titles, args.device, args.batch_sizes))
        )

    def newsq_case(kind: str, n: int, variant: str = "") -> Callable[[], Case]:
        return partial(
            newsq_run,
            model_dir,
            kind,
            256,
            titles_for(titles, n, args),
            args,
            variant=variant,
            processes=n,
        )

    if "newsq" in args.steps:
        steps += [
            (f"{kind} x{n}", newsq_case(kind, n)) for kind in databases for n in args.processes
        ]
    # The variants' process counts: the graphs captured at start matter most where processes
    # share the GPU; a second writer where one process's write stage is saturated.
    most, cuda = max(args.processes), args.device.startswith("cuda")
    # In the order a budget should keep them: those that may change a default first, the
    # common graphs only last (what it buys is measured).
    for variant, n, runs_here in (
        ("eager", 1, cuda),
        ("writers", 1, not cuda),  # CUDA with PostgreSQL has two by default (worker/tuning.py)
        ("window", most, cuda),
        ("common", most, cuda),
    ):
        if variant in args.steps and runs_here:
            steps.append((f"{args.main_db} x{n} {variant}", newsq_case(args.main_db, n, variant)))
    rounds: dict[tuple[str, int], list[Case]] = {}
    for number in range(1, args.rounds + 1):
        for label, step in steps:
            name = f"{Path(model_dir).name} {label}"
            name += f", round {number}" if args.rounds > 1 else ""
            for index, case in enumerate(run.measure(name, step, record=False)):
                rounds.setdefault((label, index), []).append(case)
    merged = []
    for position in rounds.values():
        ranked = sorted(position, key=lambda c: c.rate)
        median = ranked[len(ranked) // 2]
        median.extra["rounds"] = [round(c.rate) for c in position]
        merged.append(median)
    return merged


# -- 3. the naive baseline -------------------------------------------------------------------
def naive_run(model_dir: str, titles: list[str], args: Any) -> Case:
    """benchmarks/naive_worker.py (PostgreSQL unless only SQLite is benchmarked), fed one
    message per article."""
    redis.Redis.from_url(args.redis_url).flushdb()
    with database(args.main_db, args.work, args.pg_url) as url:
        engine = make_engine(url)
        from benchmarks.naive_worker import CREATE_TABLE, TABLE

        with engine.begin() as conn:
            conn.execute(text(CREATE_TABLE))
        env = {
            **os.environ,
            "NAIVE_BROKER_URL": args.redis_url,
            "NAIVE_DATABASE_URL": url,
            "NAIVE_MODEL_DIR": model_dir,
            "NAIVE_DEVICE": args.device,
        }
        command = [sys.executable, "-m", "celery", "-A", "benchmarks.naive_worker", "worker"]
        command += ["-P", "prefork", "-c", str(os.cpu_count() or 1), "-Q", "naive", "-l", "WARNING"]
        with (args.work / "naive.log").open("ab") as log:
            worker = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=log)
        app = celery_client(args.redis_url)
        try:
            warm = titles[:32]
            for i, title in enumerate(warm):
                app.send_task("naive.classify", args=(f"warm-{i}", title), queue="naive")
            wait_rows(engine, TABLE, len(warm), 120)
            started = time.perf_counter()
            for i, title in enumerate(titles):
                app.send_task("naive.classify", args=(f"bench-{i}", title), queue="naive")
            done = wait_rows(engine, TABLE, len(warm) + len(titles), args.timeout)
        finally:
            worker.terminate()
            worker.wait(60)
            app.close()
            engine.dispose()
    case = Case(
        "naive", Path(model_dir).name, args.main_db, 1, articles=len(titles), seconds=done - started
    )
    print(f"  naive {case.model}: {case.rate:,.0f}/s", flush=True)
    return case


# -- 4. latency at light load ----------------------------------------------------------------
def latency_run(model_dir: str, titles: list[str], args: Any) -> Case:
    """One-article messages at `--latency-rate`/s; enqueue -> row committed, per article, after
    a first one sent and committed alone: whatever a fresh client and worker still pay on
    their first message is reported apart (`first_ms`), not as light-load latency."""
    settings = Settings()
    with (
        database(args.main_db, args.work, args.pg_url) as url,
        newsq_workers(args.redis_url, url, model_dir, args) as pids,
        NewsClient(args.redis_url) as client,
    ):
        engine = make_engine(url)
        count = int(args.latency_rate * args.latency_seconds)
        sent: dict[str, float] = {}
        first, *timed = articles_for(titles[: count + 1], "lat")
        sent[first["id"]] = time.time()
        client.enqueue([first], chunk_size=1)
        wait_rows(engine, "predictions", 1, args.timeout, serial="id")
        started = time.time()
        for i, article in enumerate(timed):
            time.sleep(max(0.0, started + i / args.latency_rate - time.time()))
            sent[article["id"]] = time.time()
            client.enqueue([article], chunk_size=1)
        wait_rows(engine, "predictions", count + 1, args.timeout, serial="id")
        with engine.connect() as conn:  # through the model: SQLite's text becomes a datetime
            rows = conn.execute(select(Prediction.article_id, Prediction.created_at)).all()
        stats = scrape(pids)
        engine.dispose()
    committed = {
        aid: (created if created.tzinfo else created.replace(tzinfo=UTC)).timestamp()
        for aid, created in rows
    }
    first_ms = (committed[first["id"]] - sent[first["id"]]) * 1000
    latencies = np.array([committed[a["id"]] - sent[a["id"]] for a in timed])
    p50, p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 99))
    # Which articles were slowest, by the order they were sent in: early ones or any (H200 run
    # 8, before the first article was sent apart: p99 38.8 ms once, 7.4 minutes later).
    slowest = sorted(range(len(latencies)), key=lambda i: latencies[i], reverse=True)[:3]
    bound = settings.max_wait_ms + 2 * stats["forward_ms"]
    case = Case("latency", Path(model_dir).name, args.main_db, 1, articles=count)
    case.seconds = args.latency_seconds
    case.extra = {
        "offered_per_s": args.latency_rate,
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "first_ms": round(first_ms, 1),
        "slowest_ms_by_sent_index": {i: round(float(latencies[i]) * 1000, 1) for i in slowest},
        "bound_ms": round(bound, 1),
        **stats,
    }
    print(
        f"  latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms (bound {bound:.1f} ms); a fresh client's"
        f" and worker's first article {first_ms:.1f} ms",
        flush=True,
    )
    return case


# -- the run -----------------------------------------------------------------------------------
class Run:
    """The cases measured so far, and the steps that were not: one step that fails (or would
    start past the deadline) costs that step, not the table of the others."""

    def __init__(self, deadline: float, save: Callable[[Run], None] = lambda run: None) -> None:
        """`save` is called after every step: a run killed by its timeout (gpu.sh's) leaves
        the table of the steps that finished instead of none."""
        self.deadline = deadline
        self.cases: list[Case] = []
        self.failures: list[str] = []
        self.save = save

    def measure(
        self,
        label: str,
        step: Callable[..., Case | list[Case]],
        *args: Any,
        record: bool = True,
        **kwargs: Any,
    ) -> list[Case]:
        """`step`'s cases, kept in the table unless `record` is false (the caller keeps them
        itself: against_bare's rounds)."""
        if time.monotonic() > self.deadline:
            self.failures.append(f"{label}: skipped, past --budget")
            return []
        started = time.monotonic()
        try:
            result = step(*args, **kwargs)
        except Exception as exc:
            traceback.print_exc()
            self.failures.append(f"{label}: {type(exc).__name__}: {exc}")
            return []
        finally:  # what each step costs a budget
            print(f"  ({label}: {time.monotonic() - started:.0f} s)", flush=True)
        found = result if isinstance(result, list) else [result]
        if record:
            self.cases += found
            self.save(self)
        return found


def table(cases: list[Case], ceiling: dict[str, float], naive: dict[str, float]) -> str:
    lines = [
        "| case | model | database | articles/msg | articles | articles/s (range of rounds) "
        "| of bare ceiling | sustained: 20-80% of rows/s, of bare "
        "| vs naive | rows/batch | fill | CPU µs/article: workers / producers / PostgreSQL / Redis "
        "| cores busy "
        "| stages busy: prepare / forward / write | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        if c.kind == "latency":
            continue
        notes = [c.extra["batching"]] if c.kind == "bare" else []
        if c.kind == "newsq" and c.processes > 1:
            notes.append(f"{c.processes} processes")
        if c.extra.get("producers", 1) > 1:
            notes.append(f"{c.extra['producers']} producers")
        if c.extra.get("variant"):
            notes.append(VARIANTS[c.extra["variant"]][0])
        label = f"{c.kind} ({', '.join(notes)})" if notes else c.kind
        of_bare = (
            f"{c.rate / ceiling[c.model]:.2f}" if c.kind == "newsq" and c.model in ceiling else "-"
        )
        vs_naive = (
            f"{c.rate / naive[c.model]:.1f}x" if c.kind == "newsq" and c.model in naive else "-"
        )
        rate = f"{c.rate:,.0f}"
        steady = c.extra.get("sustained_per_s")
        sustained = f"{steady:,}" if steady else "-"
        if steady and c.model in ceiling:
            sustained += f" ({steady / ceiling[c.model]:.2f})"
        busy = (
            " / ".join(str(c.extra[f"busy_{stage}"]) for stage in STAGES)
            if c.kind == "newsq"
            else "-"
        )
        cpu = (
            " / ".join(
                str(c.extra.get(key, "-"))
                for key in ("worker_cpu_us", "client_cpu_us", "postgresql_cpu_us", "redis_cpu_us")
            )
            if c.kind == "newsq"
            else "-"
        )
        if len(c.extra.get("rounds", [])) > 1:
            rate += f" ({min(c.extra['rounds']):,}-{max(c.extra['rounds']):,})"
        lines.append(
            f"| {label} | {c.model} | {c.database} | {c.per_message or '-'} | {c.articles:,} "
            f"| {rate} | {of_bare} | {sustained} | {vs_naive} | {c.extra.get('mean_rows', '-')} "
            f"| {c.extra.get('fill', '-')} | {cpu} "
            f"| {c.extra.get('cores_busy', '-')} | {busy} | {c.extra.get('peak_rss_mb', '-')} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="null,small", help="null, small, base (GPU)")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--null-articles", type=int, default=200_000)
    parser.add_argument("--model-articles", type=int, default=20_000)
    parser.add_argument("--single-articles", type=int, default=10_000, help="1-article messages")
    parser.add_argument("--naive-articles", type=int, default=2_000)
    parser.add_argument(
        "--warm-articles",
        type=int,
        default=32,
        help="articles per worker process classified before the clock starts (32: one message; "
        "on a GPU thousands: with NEWSQ_CUDA_GRAPHS_WARMUP=common, so that each worker has met "
        "and captured the run's batch shapes, as the bare loop captures its own before it is "
        "timed)",
    )
    parser.add_argument(
        "--per-process",
        action="store_true",
        help="--model-articles and --null-articles count per worker process in the 256-article"
        " cases (N processes classify N times as many), so that a case of many processes is not"
        " mostly its start and tail: with 8 processes on the H200, 200,000 articles lasted ~3.5"
        " s, a sixth of it filling and draining the stages",
    )
    parser.add_argument(
        "--batch-sizes",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 64, 256],
        help="fixed batch sizes of the bare model, beside the plan of newsq's batch policy",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of bare vs newsq per model (median kept)"
    )
    parser.add_argument(
        "--processes",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1],
        help="worker processes of the null and 256-article runs, e.g. 1,2 (each measured)",
    )
    parser.add_argument(
        "--producers",
        type=int,
        default=1,
        help="processes enqueueing in parallel, each its own NewsClient (one tops out near "
        "60,000-90,000 articles/s on the H200 machine's cores)",
    )
    parser.add_argument(
        "--profile", type=Path, help="folder for py-spy profiles of the workers (256/msg runs)"
    )
    parser.add_argument(
        "--steps",
        type=lambda text: set(text.split(",")),
        default=set(STEPS),
        help=f"which to run, of {','.join(STEPS)} (default: all; 'eager', 'window', 'common'"
        " only on CUDA, 'writers' only on a CPU)",
    )
    parser.add_argument("--latency-rate", type=float, default=20.0)
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for rows")
    parser.add_argument(
        "--budget",
        type=float,
        default=float("inf"),
        help="seconds for the whole run: steps that would start later are skipped and listed",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/pipeline.json")
    args = parser.parse_args()
    if unknown := args.steps - set(STEPS):
        parser.error(f"unknown --steps {','.join(sorted(unknown))}; choose from {','.join(STEPS)}")
    args.models = args.models.split(",")
    args.databases = args.databases.split(",")
    # one-article messages, the naive worker and latency run on one database: PostgreSQL if listed
    args.main_db = "postgresql" if "postgresql" in args.databases else args.databases[0]
    return args


def one_article_runs(run: Run, dirs: dict[str, str], titles: list[str], args: Any) -> None:
    """One article per message: the null model with each --processes, events on and lean (the
    pipeline's own ceiling on this shape), and each real model with one process."""
    for shape, model_dir in dirs.items():
        if shape != "null":
            single = titles[: args.single_articles // 4]
            run.measure(f"{shape} 1/msg", newsq_run, model_dir, args.main_db, 1, single, args)
            continue
        for n in args.processes:
            for variant in ("", "lean"):
                run.measure(
                    f"null 1/msg x{n} {variant}",
                    newsq_run,
                    model_dir,
                    args.main_db,
                    1,
                    titles[: args.single_articles],
                    args,
                    variant=variant,
                    processes=n,
                )


def null_runs(run: Run, model_dir: str, titles: list[str], args: Any) -> None:
    """The pipeline's ceiling: the null model, 256-article messages, on each database with each
    process count."""
    for kind in args.databases:
        for n in args.processes:
            case_titles = titles_for(titles, n, args, args.null_articles)
            run.measure(
                f"null {kind} x{n}", newsq_run, model_dir, kind, 256, case_titles, args, processes=n
            )


def titles_for(titles: list[str], processes: int, args: Any, count: int | None = None) -> list[str]:
    """The titles of a 256-article case of `processes` worker processes: `count` (default
    --model-articles), times `processes` with --per-process."""
    count = args.model_articles if count is None else count
    return titles[: count * (processes if args.per_process else 1)]


def measure(args: argparse.Namespace, save: Callable[[Run], None]) -> Run:
    """Every step in order."""
    models, databases = args.models, args.databases
    scale = max(args.processes) if args.per_process else 1
    titles = read_titles(
        max(args.null_articles * scale, args.model_articles * scale, args.single_articles)
    )
    run = Run(time.monotonic() + args.budget, save)
    with tempfile.TemporaryDirectory(prefix="newsq-bench-") as tmp:
        args.work = Path(tmp)
        dirs = {shape: make_model(shape, args.work) for shape in models}
        light = next((s for s in models if s != "null"), "null")
        if "latency" in args.steps:  # first: short, and a goal of its own
            run.measure("latency", latency_run, dirs[light], titles, args)
        for shape in models:
            if shape == "null":
                if "null" in args.steps:
                    null_runs(run, dirs[shape], titles, args)
                continue
            run.measure(f"{shape} vs bare", against_bare, dirs[shape], titles, databases, args, run)
            if "naive" in args.steps:
                naive_titles = titles[: args.naive_articles]
                run.measure(f"naive {shape}", naive_run, dirs[shape], naive_titles, args)
        if "single" in args.steps:
            one_article_runs(run, dirs, titles, args)
    return run


def best_rates(cases: list[Case], kind: str) -> dict[str, float]:
    """Per model, the best rate of its `kind` cases: "bare" gives the ceiling (the best of the
    batch sizes and newsq's policy), "naive" the baseline."""
    rates: dict[str, float] = {}
    for case in cases:
        if case.kind == kind:
            rates[case.model] = max(rates.get(case.model, 0.0), case.rate)
    return rates


def report(args: argparse.Namespace, run: Run) -> str:
    text = table(run.cases, best_rates(run.cases, "bare"), best_rates(run.cases, "naive"))
    for latency in (c for c in run.cases if c.kind == "latency"):
        light = latency.extra
        text += (
            f"\n\nLatency, {latency.model} model, {args.main_db}, one article per message "
            f"offered at {light['offered_per_s']:.0f}/s: p50 {light['p50_ms']} ms, "
            f"p99 {light['p99_ms']} ms (bound: max wait {Settings().max_wait_ms} ms "
            f"+ 2 x forward {light['forward_ms']} ms = {light['bound_ms']} ms); the first "
            f"article of a fresh client and worker, sent alone before them: {light['first_ms']} ms."
        )
    if run.failures:
        text += "\n\nNot measured:\n" + "\n".join(f"- {f}" for f in run.failures)
    return text


def write(args: argparse.Namespace, run: Run) -> None:
    """The JSON of what is measured so far (written after every step, then at the end)."""
    args.output.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "device": args.device,
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "ceiling": best_rates(run.cases, "bare"),
        "naive": best_rates(run.cases, "naive"),
        "cases": [{**asdict(c), "rate": round(c.rate, 1)} for c in run.cases],
        "failures": run.failures,
        "table": report(args, run),
    }
    partial_file = args.output.with_suffix(".part")  # a reader never sees half a file
    partial_file.write_text(json.dumps(results, indent=2) + "\n")
    partial_file.replace(args.output)


def main() -> None:
    args = parse_args()
    run = measure(args, save=partial(write, args))
    write(args, run)
    print(report(args, run))
    if run.failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
