"""Benchmark of `newsq ingest`: articles/s into Redis and peak memory, for an N-row CSV.

Measured in one run, on the same file, against a baseline: Python's csv module alone reading
the file (the floor of any CSV ingest written in Python). Writes a markdown table to stdout and
JSON to benchmarks/results/ingest.json.

    .venv/bin/python benchmarks/ingest.py --rows 1000000 [--redis redis://127.0.0.1:6379/14]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
TITLES = ROOT.parent / "shared/data/thucnews/train.txt"


def make_csv(path: Path, rows: int) -> None:
    titles = [line.split("\t", 1)[0] for line in TITLES.read_text(encoding="utf-8").splitlines()]
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "title", "content", "source"])
        for i in range(rows):
            writer.writerow([f"bench-{i}", titles[i % len(titles)], "", "thucnews"])


def csv_only(path: Path) -> float:
    started = time.perf_counter()
    with path.open(encoding="utf-8", newline="") as handle:
        count = sum(1 for _ in csv.reader(handle)) - 1
    return count / (time.perf_counter() - started)


def run_ingest(path: Path, redis_url: str, chunk_size: int) -> tuple[float, float]:
    """Seconds (process start to exit) and peak RSS (MB) of the ingest process."""
    env = {**os.environ, "NEWSQ_BROKER_URL": redis_url}
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "newsq",
            "ingest",
            str(path),
            "--restart",
            "--chunk-size",
            str(chunk_size),
            "--max-queue",
            str(10**9),
        ],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return elapsed, peak_mb


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the median is reported")
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis)
    client.flushdb()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "articles.csv"
        make_csv(path, args.rows)
        size_mb = path.stat().st_size / 1e6
        runs = []
        for _ in range(args.repeat):
            baseline = csv_only(path)
            elapsed, peak_mb = run_ingest(path, args.redis, args.chunk_size)
            queued = client.llen("newsq.classify")
            client.flushdb()
            runs.append((args.rows / elapsed, baseline, elapsed))
    rates = sorted(r[0] for r in runs)
    rate, baseline, elapsed = sorted(runs)[len(runs) // 2]
    result = {
        "rows": args.rows,
        "file_mb": round(size_mb, 1),
        "chunk_size": args.chunk_size,
        "messages_queued": queued,
        "ingest_seconds": round(elapsed, 2),
        "ingest_articles_per_s": round(rate),
        "csv_module_rows_per_s": round(baseline),
        "ratio_to_csv_module": round(rate / baseline, 3),
        "peak_rss_mb": round(peak_mb, 1),
        "all_runs_articles_per_s": [round(r) for r in rates],
    }
    out = ROOT / "benchmarks/results/ingest.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"| rows | file | newsq ingest into Redis, median of {len(runs)} (range) "
        f"| csv module alone | ratio | peak RSS |\n|---|---|---|---|---|---|\n"
        f"| {args.rows:,} | {size_mb:.0f} MB | {rate:,.0f} articles/s "
        f"({rates[0]:,.0f}-{rates[-1]:,.0f}) | {baseline:,.0f} rows/s "
        f"| {rate / baseline:.3f} | {peak_mb:.0f} MB |"
    )


if __name__ == "__main__":
    main()
