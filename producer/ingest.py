"""Bulk ingestion: stream a CSV / JSON Lines file into the classify queue, resumably.

Memory stays flat: rows are read one at a time and sent in messages of `chunk_size`; only a
96-bit digest per article id is kept, to skip duplicate ids. After each message a checkpoint in
Redis records how many data rows are done, so a run that was interrupted (Ctrl-C, SIGKILL)
resumes after the last sent message; at worst that one message is sent twice, which the
workers' upsert absorbs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from producer.client import NewsClient
from producer.contract import Article
from producer.sources import Columns, Format, Row, SourceError, open_text, read_rows

CHECKPOINT_PREFIX = "newsq:ingest:"
CHECKPOINT_TTL_S = 30 * 24 * 3600


@dataclass(frozen=True)
class IngestOptions:
    path: str
    fmt: Format = "csv"
    encoding: str = "auto"
    columns: Columns = field(default_factory=Columns)
    chunk_size: int = 512
    max_queue: int = 2000
    rejects_path: Path | None = None
    restart: bool = False
    priority: int | None = None
    keep_ids: bool = False


@dataclass
class IngestSummary:
    """Totals for the file (across resumed runs); `rows_this_run` is what this run read."""

    rows_read: int = 0
    enqueued: int = 0
    rejected: int = 0
    duplicates: int = 0
    resumed_at_row: int = 0
    already_done: bool = False
    elapsed_s: float = 0.0
    encoding: str = ""
    rows_this_run: int = 0
    ids: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.rows_this_run / self.elapsed_s if self.elapsed_s else 0.0

    def counters(self) -> dict[str, int]:
        return {
            "rows_read": self.rows_read,
            "enqueued": self.enqueued,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
        }


class Progress:
    """What the ingest reports as it goes; the CLI draws bars from it, tests ignore it."""

    def rows(self, done: int, bytes_read: int) -> None: ...

    def waiting(self, queue_length: int) -> None: ...


def fingerprint(options: IngestOptions) -> str | None:
    """Identify a file and the options that shape its rows; stdin cannot be resumed."""
    if options.path == "-":
        return None
    try:
        stat = os.stat(options.path)
    except OSError as exc:
        raise SourceError(f"cannot read {options.path}: {exc.strerror}") from exc
    key = (
        f"{Path(options.path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{options.fmt}|"
        f"{options.columns}|{options.encoding}"
    )
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class Checkpoint:
    """Progress of one file in a Redis hash: rows done, counters, and whether it finished."""

    def __init__(self, client: NewsClient, key: str | None) -> None:
        self.client = client
        self.key = CHECKPOINT_PREFIX + key if key else None

    def load(self) -> dict[str, str]:
        if self.key is None:
            return {}
        raw = self.client.redis().hgetall(self.key)
        return {k.decode(): v.decode() for k, v in raw.items()}

    def save(self, rows_done: int, counters: dict[str, int], status: str = "running") -> None:
        if self.key is None:
            return
        fields = {"rows_done": rows_done, "status": status, **counters}
        self.client.redis().pipeline(transaction=False).hset(self.key, mapping=fields).expire(
            self.key, CHECKPOINT_TTL_S
        ).execute()

    def clear(self) -> None:
        if self.key is not None:
            self.client.redis().delete(self.key)


class RejectsFile:
    """Bad rows as CSV: line number, reason, and the record as read. Opened on the first one."""

    def __init__(self, path: Path | None, append: bool) -> None:
        self.path = path
        self.append = append
        self._handle: IO[str] | None = None
        self._writer: Any = None

    def write(self, rows: list[Row]) -> None:
        if not rows or self.path is None:
            return
        if self._writer is None:
            fresh = not (self.append and self.path.exists())
            self._handle = self.path.open("w" if fresh else "a", encoding="utf-8", newline="")
            self._writer = csv.writer(self._handle)
            if fresh:
                self._writer.writerow(["line", "reason", "record"])
        for row in rows:
            self._writer.writerow([row.line, row.error, format_raw(row.raw)])
        assert self._handle is not None
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def format_raw(raw: list[str] | str) -> str:
    if isinstance(raw, str):
        return raw.encode("utf-8", "backslashreplace").decode("utf-8")
    out = io.StringIO()
    csv.writer(out).writerow(raw)
    return out.getvalue().rstrip("\r\n").encode("utf-8", "backslashreplace").decode("utf-8")


def id_digest(article: Article) -> bytes:
    """96 bits of the id: a collision among 10 million ids has odds of about 1e-15."""
    return hashlib.blake2b(article.key.encode(), digest_size=12).digest()


class Ingest:
    """One run over one file: resume point, duplicate filter, pending message, pending rejects."""

    stream: IO[str]
    rows: Iterator[Row]

    def __init__(self, client: NewsClient, options: IngestOptions) -> None:
        self.client = client
        self.options = options
        self.checkpoint = Checkpoint(client, None)
        self.summary = IngestSummary()
        self.seen: set[bytes] = set()
        self.batch: list[Article] = []
        self.bad: list[Row] = []
        self.done = 0
        self.rows_before = 0

    def prepare(self) -> bool:
        """Load the checkpoint and open the file; False when the file was already done.

        Raises SourceError (unreadable file, missing column) before anything is sent.
        """
        self.checkpoint = Checkpoint(self.client, fingerprint(self.options))
        if self.options.restart:
            self.checkpoint.clear()
        state = self.checkpoint.load()
        summary = self.summary
        for name in summary.counters():
            setattr(summary, name, int(state.get(name, 0)))
        self.rows_before = summary.rows_read
        if state.get("status") == "done":
            summary.already_done = True
            return False
        summary.resumed_at_row = int(state.get("rows_done", 0))
        self.stream, summary.encoding = open_text(self.options.path, self.options.encoding)
        try:
            self.rows = read_rows(self.stream, self.options.fmt, self.options.columns)
        except SourceError:
            self.stream.close()
            raise
        return True

    def run(self, progress: Progress | None = None) -> IngestSummary:
        if not hasattr(self, "rows") and not self.prepare():
            return self.summary
        progress = progress or Progress()
        summary = self.summary
        started = time.monotonic()
        rejects = RejectsFile(self.options.rejects_path, append=summary.resumed_at_row > 0)
        resume_at, chunk_size = summary.resumed_at_row, self.options.chunk_size
        try:
            for row in self.rows:
                self.done += 1
                if self.done <= resume_at:
                    self._remember(row)
                elif self._take(row) >= chunk_size:
                    self._flush(rejects, progress)
                    progress.rows(self.done, _position(self.stream))
            self._flush(rejects, progress, status="done")
            progress.rows(self.done, _position(self.stream))
        finally:
            rejects.close()
            self.stream.close()
            summary.elapsed_s = time.monotonic() - started
        return summary

    def _remember(self, row: Row) -> None:
        """A row sent by an earlier run: only its id matters, for the duplicate filter."""
        if row.article is not None:
            self.seen.add(id_digest(row.article))
            if self.options.keep_ids:
                self.summary.ids.append(row.article.key)

    def _take(self, row: Row) -> int:
        """File a new row; returns the length of the pending list it joined."""
        if row.article is None:
            self.summary.rejected += 1
            self.bad.append(row)
            return len(self.bad)
        digest = id_digest(row.article)
        if digest in self.seen:
            self.summary.duplicates += 1
            return 0
        self.seen.add(digest)
        self.batch.append(row.article)
        if self.options.keep_ids:
            self.summary.ids.append(row.article.key)
        return len(self.batch)

    def _flush(self, rejects: RejectsFile, progress: Progress, status: str = "running") -> None:
        """Send the pending message (waiting for room), log pending rejects, then checkpoint."""
        if self.batch:
            self.client.wait_for_room(self.options.max_queue, progress.waiting)
            self.client.send_chunk(self.batch, priority=self.options.priority)
            self.summary.enqueued += len(self.batch)
            self.batch = []
        rejects.write(self.bad)
        self.bad = []
        summary = self.summary
        summary.rows_this_run = self.done - summary.resumed_at_row
        summary.rows_read = self.rows_before + summary.rows_this_run
        self.checkpoint.save(self.done, summary.counters(), status)


def _position(stream: IO[str]) -> int:
    binary = getattr(stream, "buffer", None)
    return int(binary.tell()) if binary is not None and binary.seekable() else 0
