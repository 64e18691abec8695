"""Prometheus metrics of a worker process, served on its own port (`NEWSQ_METRICS_PORT`).

The batcher and the task record into these; `serve` exposes them with the gauges that are read
at scrape time (queue depth, GPU memory).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server

# Seconds per window, batch or transaction of the pipeline's three stages (worker/batcher.py).
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
ARTICLES = Counter(
    "newsq_articles_classified", "Articles classified and committed", ["model_version"]
)
REJECTS = Counter("newsq_rejects", "Articles or messages refused, with a row in rejects")
BATCH_ROWS = Histogram(
    "newsq_batch_rows",
    "Articles per forward batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
)
BATCH_PADDED_TOKENS = Histogram(
    "newsq_batch_padded_tokens",
    "Rows x padded length per batch",
    buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768),
)
BATCH_TOKENS = Counter(
    "newsq_batch_tokens", "Real (unpadded) tokens fed to the model; over padded: the fill"
)
PREPARE_SECONDS = Histogram(
    "newsq_batch_prepare_seconds",
    "Tokenizing, sorting, cutting and padding one window of articles into batches",
    buckets=STAGE_BUCKETS,
)
BATCH_SECONDS = Histogram(
    "newsq_batch_forward_seconds",
    "Forward pass time per batch",
    buckets=STAGE_BUCKETS,
)
WRITE_SECONDS = Histogram(
    "newsq_batch_write_seconds",
    "Bulk upsert time per batch",
    buckets=STAGE_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "newsq_batcher_wait_seconds",
    "Time from a task handing over its articles to their batch being cut (one per task)",
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CUDA_GRAPH_CAPTURE_SECONDS = Histogram(
    "newsq_cuda_graph_capture_seconds",
    "Capturing the forward pass of one batch shape as a CUDA graph (once per shape)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
MODEL = Info("newsq_model", "The model this worker serves")
RELOAD_FAILURES = Counter(
    "newsq_model_reload_failures",
    "Attempts to load a newly promoted model that failed (the worker keeps serving its model)",
)
QUEUE_DEPTH = Gauge("newsq_queue_depth", "Messages waiting in the classify queue")
GPU_MEMORY = Gauge("newsq_gpu_memory_bytes", "GPU memory allocated by this worker's model")


def serve(
    port: int, queue_depth: Callable[[], float], gpu_memory: Callable[[], float] | None = None
) -> None:
    """Start the /metrics HTTP server in a daemon thread."""
    QUEUE_DEPTH.set_function(queue_depth)
    if gpu_memory is not None:
        GPU_MEMORY.set_function(gpu_memory)
    start_http_server(port)
