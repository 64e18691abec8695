"""`newsq ingest`: progress bars, the summary, and `--wait` following the classification."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from db import queries
from db.engine import make_engine
from newsq.settings import Settings
from producer.client import NewsClient
from producer.ingest import Ingest, IngestOptions, IngestSummary
from producer.ingest import Progress as IngestProgress
from producer.sources import SourceError

console = Console(stderr=True)


def bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class IngestBar(IngestProgress):
    """Rows read, rows/s and an ETA from the bytes read of the file (none for stdin)."""

    def __init__(self, progress: Progress, total_bytes: int | None, first_row: int) -> None:
        self.progress = progress
        self.task: TaskID = progress.add_task("ingest", total=total_bytes, info="")
        self.started = time.monotonic()
        self.first_row = first_row

    def rows(self, done: int, bytes_read: int) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = (done - self.first_row) / elapsed
        self.progress.update(
            self.task, completed=bytes_read or None, info=f"{done:,} rows  {rate:,.0f} rows/s"
        )

    def waiting(self, queue_length: int) -> None:
        self.progress.update(self.task, info=f"queue full ({queue_length:,} messages): waiting")


def ingest_table(path: str, summary: IngestSummary) -> Table:
    table = Table(title=f"ingest of {path}" + (" (resumed)" if summary.resumed_at_row else ""))
    table.add_column("")
    table.add_column("", justify="right")
    rows: Sequence[tuple[str, str]] = [
        ("rows read", f"{summary.rows_read:,}"),
        ("enqueued", f"{summary.enqueued:,}"),
        ("rejected", f"{summary.rejected:,}"),
        ("duplicates skipped", f"{summary.duplicates:,}"),
        ("elapsed (this run)", f"{summary.elapsed_s:.1f} s"),
        ("rate (this run)", f"{summary.rate:,.0f} rows/s"),
        ("encoding", summary.encoding),
    ]
    if summary.resumed_at_row:
        rows = [("resumed after row", f"{summary.resumed_at_row:,}"), *rows]
    for name, value in rows:
        table.add_row(name, value)
    return table


def label_table(counts: Sequence[tuple[str, int]]) -> Table:
    table = Table(title="labels")
    table.add_column("label")
    table.add_column("articles", justify="right")
    for label, n in counts:
        table.add_row(label, f"{n:,}")
    return table


def run_ingest(settings: Settings, options: IngestOptions, *, wait: bool, timeout: float) -> int:
    """Returns the exit code: 0 done, 1 --wait timed out, 2 the file cannot be read as asked."""
    total = None if options.path == "-" else _size(options.path)
    with NewsClient(settings.broker_url) as client:
        job = Ingest(client, options)
        try:
            ready = job.prepare()
        except SourceError as exc:
            console.print(f"[red]error:[/] {exc}")
            return 2
        if ready:
            with bar() as progress:
                job.run(IngestBar(progress, total, job.summary.resumed_at_row))
    summary = job.summary
    if summary.already_done:
        console.print(
            f"{options.path} was already ingested completely "
            f"({summary.enqueued:,} articles); --restart sends it again."
        )
        return 0
    console.print(ingest_table(options.path, summary))
    if summary.rejected and options.rejects_path is not None:
        console.print(f"bad rows: {options.rejects_path}")
    return follow(settings, summary.ids, timeout) if wait else 0


def follow(settings: Settings, ids: list[str], timeout: float) -> int:
    """Second bar: classified / enqueued, then the label distribution."""
    engine = make_engine(settings.database_url)
    pending = set(ids)
    deadline = time.monotonic() + timeout
    try:
        with bar() as progress:
            task = progress.add_task("classify", total=len(pending), info="")
            while pending and time.monotonic() < deadline:
                pending -= queries.found_ids(engine, list(pending))
                done = len(ids) - len(pending)
                progress.update(task, completed=done, info=f"{done:,} / {len(ids):,} classified")
                if pending:
                    time.sleep(1.0)
        console.print(label_table(queries.label_counts(engine, ids)))
    finally:
        engine.dispose()
    if pending:
        console.print(f"[red]{len(pending):,} articles not classified within {timeout:.0f}s[/]")
        return 1
    return 0


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None
