"""Runtime configuration, read from `NEWSQ_*` environment variables (or a `.env` file).

One place for every knob, so the CLI, the worker and the demo agree on defaults and a deployment
is described entirely by its environment.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, get_args

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# How the forward pass holds its weights (worker/model.py resolve_precision).
Precision = Literal["auto", "fp32", "bf16", "bf16-autocast"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NEWSQ_", env_file=".env", extra="ignore")

    broker_url: str = Field(
        "redis://localhost:6379/0", description="Redis URL of the Celery broker."
    )
    database_url: str = Field(
        "sqlite:///newsq.db",
        description="SQLAlchemy URL; SQLite file by default, PostgreSQL in production.",
    )
    model_dir: str = Field(
        "models/current",
        description="save_pretrained folder or Hugging Face model name the classify worker loads;"
        " `null`: constant output, no forward pass (benchmarks of the pipeline itself).",
    )
    model_version: str | None = Field(
        None,
        description="Version label stored with predictions; derived from the model when unset.",
    )
    tokenizer_dir: str = Field(
        "../shared/data/bert-base-chinese",
        description="Tokenizer/config folder of `newsq model init` and of the `null` model.",
    )
    device: str = Field(
        "auto", description="auto, cpu, cuda or cuda:N.", pattern=r"^(auto|cpu|cuda(:\d+)?)$"
    )
    precision: Precision = Field(
        "auto",
        description="Weights and arithmetic of the forward pass: fp32, bf16 (weights cast),"
        " bf16-autocast; auto: bf16 on a CUDA GPU that has it, fp32 elsewhere.",
    )
    cuda_graphs: bool = Field(
        True,
        description="On a CUDA device, replay the forward pass as one CUDA graph per batch shape"
        " (captured once each) instead of launching its kernels one by one from Python.",
    )
    cuda_graphs_warmup: Literal["all", "common"] = Field(
        "all",
        description="Which CUDA graphs a worker captures before it consumes: all, every row bucket"
        " up to a full budget at every width (bert-base defaults: 129 graphs, ~15 s); common, the"
        " light-load and full-budget shapes (32), the others when met a second time.",
    )
    token_budget: int | None = Field(
        None,
        gt=0,
        description="Max rows x padded length of one forward batch; unset: 4096 on CPU, 32768 on"
        " CUDA (worker/tuning.py).",
    )
    max_wait_ms: float = Field(
        20.0,
        ge=0,
        description="How long the first article of a batch may wait for company (not at all when"
        " less than one more article is expected in that time).",
    )
    max_batch_rows: int | None = Field(
        None, gt=0, description="Hard cap on rows in one batch; unset: 512 on CPU, 2048 on CUDA."
    )
    window_budgets: int | None = Field(
        None,
        gt=0,
        description="Once a window of waiting articles closes, the batcher takes what is already"
        " waiting up to this many token budgets, to sort by length; unset: 16 on CPU, 4 on CUDA.",
    )
    max_length: int = Field(
        64, gt=2, le=512, description="Tokens per article (longer is truncated)."
    )
    concurrency: int | None = Field(
        None,
        gt=0,
        description="Task threads (Celery's pool): each validates a message and hands its"
        " articles to the batcher, then takes the next; unset: 8.",
    )
    model_threads: int | None = Field(
        None,
        gt=0,
        description="Forward passes run side by side, each on cores / threads torch threads;"
        " unset: one per core on CPU, 1 on CUDA.",
    )
    writers: int | None = Field(
        None,
        gt=0,
        description="Write threads, each committing batches on a database connection of its own,"
        " for a worker whose write stage is always busy; unset: 2 on CUDA with a database server,"
        " else 1 (SQLite lets one writer in at a time; on 2 CPU cores two were no faster).",
    )
    tokenizer_parallelism: bool | None = Field(
        None,
        description="Let the Rust tokenizer use its own thread pool; unset: on with CUDA, off on"
        " CPU (where its spinning threads take the model's cores).",
    )
    articles_in_hand: int = Field(
        32768,
        gt=0,
        description="Articles a worker holds in its unacked messages, about: its prefetch credit"
        " follows the articles per message (128 messages of 256, up to 4,096 of one).",
    )
    visibility_timeout: int = Field(
        3600, gt=0, description="Seconds before Redis redelivers an unacked message."
    )
    max_deliveries: int = Field(
        5,
        gt=0,
        description="Deaths of a message's worker while classifying it (its first delivery, then"
        " each redelivery, classified alone) before its articles are dead-lettered as rejects"
        " instead of being tried again.",
    )
    task_events: bool = Field(
        True,
        description="Send Celery task events from the start (Flower turns them on anyway when it"
        " connects); off saves building and sending the three events of each message (~240 µs"
        " of a worker's CPU).",
    )
    log_tasks: bool = Field(
        False,
        description="Celery's INFO line per message received and per task done; off: at"
        " thousands of messages a second they cost ~170 µs a message and say what Flower, the"
        " metrics and SQL show.",
    )
    task_timeout: float = Field(
        600.0, gt=0, description="Seconds a message in hand waits for its rows before a retry."
    )
    reload_interval_s: float = Field(
        5.0, gt=0, description="How often a worker checks SQL for a newly promoted model."
    )
    metrics_port: int = Field(
        9808, ge=0, description="Prometheus /metrics port of a worker (0: off); +N for slot N."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; cached so every module sees one consistent snapshot."""
    return Settings()
