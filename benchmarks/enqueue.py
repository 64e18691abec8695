"""One producer process of a benchmark run (`benchmarks/run --producers N` starts N of them).

One NewsClient is one Python interpreter validating, serializing and sending: on the H200
machine it sent 56,000-96,000 articles/s, below the bare model's 77,830/s, so a single client
capped what the end-to-end runs there could show. Production has many producers; so can the
benchmark. Each process reads its share of the articles, connects, says `ready`, waits for a
line on stdin so that all of them start together, enqueues, and prints its seconds and CPU
seconds as JSON.

It enqueues STREAM_ARTICLES per call, streaming as `newsq ingest` does: `enqueue` validates
every article of a call before it sends the first, and one call of 200,000 articles kept the
queue empty for the first 1.1 s of a case on this machine's 2 cores, a time the workers could
only wait through.

    python -m benchmarks.enqueue REDIS_URL ARTICLES_PER_MESSAGE ARTICLES.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from producer.client import NewsClient

STREAM_ARTICLES = 4096


def main() -> None:
    redis_url, per_message, path = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    articles = json.loads(path.read_text(encoding="utf-8"))
    with NewsClient(redis_url) as client:
        client.queue_length()  # connected before the clock starts
        print("ready", flush=True)
        sys.stdin.readline()
        cpu, started = time.process_time(), time.perf_counter()
        for start in range(0, len(articles), STREAM_ARTICLES):
            client.enqueue(articles[start : start + STREAM_ARTICLES], chunk_size=per_message)
        seconds = time.perf_counter() - started
        print(json.dumps({"seconds": seconds, "cpu": time.process_time() - cpu}), flush=True)


if __name__ == "__main__":
    main()
