"""Reading articles from CSV and JSON Lines files, streaming, with per-row errors.

Pure parsing: no Redis, no progress bars. Each data row comes out as a `Row` holding either an
`Article` or the reason it was refused, with the line number where the record starts, so the
ingest script can report bad rows and go on.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import operator
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import ValidationError

from producer.contract import Article, describe

Format = Literal["csv", "jsonl"]
# A field of a real export can be far larger than csv's default 128 KiB; the contract truncates.
csv.field_size_limit(1 << 30)
SAMPLE_BYTES = 1 << 16


class SourceError(Exception):
    """The whole file cannot be read as asked (missing column, unreadable file): stop at once."""


@dataclass(frozen=True, slots=True)
class Columns:
    id: str = "id"
    title: str = "title"
    content: str = "content"
    source: str = "source"

    def names(self) -> list[str]:
        return [self.id, self.title, self.content, self.source]


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    article: Article | None
    error: str | None = None
    # The record as read (CSV fields or the JSON line); only formatted when the row is refused.
    raw: list[str] | str = ""


def detect_encoding(sample: bytes) -> str:
    """UTF-8 (with or without BOM) when the sample decodes as such, else GB18030 (a superset of
    GBK and GB2312, the usual encodings of Chinese CSV exports)."""
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return "gb18030"
    return "utf-8"


def detect_format(path: str) -> Format:
    return "jsonl" if path.lower().endswith((".jsonl", ".ndjson", ".jsonl.gz")) else "csv"


def open_text(path: str, encoding: str) -> tuple[IO[str], str]:
    """Open `path` (or `-` for stdin) as text; undecodable bytes survive as surrogates so the
    row holding them can be refused with its line number instead of aborting the file."""
    try:
        raw: Any = sys.stdin.buffer if path == "-" else Path(path).open("rb")  # noqa: SIM115
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from exc
    buffered: io.BufferedReader = (
        raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)
    )
    if encoding == "auto":
        encoding = detect_encoding(buffered.peek(SAMPLE_BYTES)[:SAMPLE_BYTES])
    elif encoding.replace("_", "-").lower() in ("utf-8", "utf8") and buffered.peek(3).startswith(
        codecs.BOM_UTF8
    ):
        encoding = "utf-8-sig"
    try:
        codecs.lookup(encoding)
    except LookupError as exc:
        raise SourceError(f"unknown encoding {encoding!r}") from exc
    return io.TextIOWrapper(
        buffered, encoding=encoding, errors="surrogateescape", newline=""
    ), encoding


# The schema validator itself: skips pydantic's Python wrapper, once per row.
_validate = Article.__pydantic_validator__.validate_python


def to_row(line: int, fields: list[Any], raw: list[str] | str) -> Row:
    """`fields` are the id, title, content and source as read (None where absent)."""
    article_id = fields[0]
    if isinstance(article_id, int) and not isinstance(article_id, bool):
        article_id = str(article_id)  # JSON Lines exports often carry numeric ids
    if isinstance(article_id, str):
        article_id = article_id.strip() or None
    try:
        article = _validate(
            {"id": article_id, "title": fields[1] or "", "content": fields[2], "source": fields[3]}
        )
    except ValidationError as exc:
        return Row(line, None, describe(exc), raw)
    return Row(line, article.with_key(), None, raw)


def read_csv(stream: IO[str], columns: Columns) -> Iterator[Row]:
    """Check the header now (SourceError), then yield the data rows lazily."""
    reader = csv.reader(stream)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise SourceError("the file is empty (no header row)") from None
    if columns.title not in header:
        raise SourceError(
            f"no column {columns.title!r} in the header; columns are: {', '.join(header)}"
            " (choose one with --title-column)"
        )
    # Position of id, title, content, source; -1 for a column the file does not have.
    positions = [header.index(name) if name in header else -1 for name in columns.names()]
    return _csv_rows(reader, positions)


def _csv_rows(reader: Any, positions: list[int]) -> Iterator[Row]:
    start = reader.line_num + 1
    needed = max(positions) + 1
    # Fast path for complete rows of a file that has all four columns.
    pick = operator.itemgetter(*positions) if min(positions) >= 0 else None
    for values in reader:
        line, start = start, reader.line_num + 1
        width = len(values)
        if width <= 1 and not (values and values[0].strip()):
            continue  # blank line
        if pick is not None and width >= needed:
            fields = list(pick(values))
        else:
            fields = [values[i] if 0 <= i < width else None for i in positions]
        yield to_row(line, fields, values)


def read_jsonl(stream: IO[str], columns: Columns) -> Iterator[Row]:
    names = columns.names()
    for line, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        raw = text.rstrip("\r\n")
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Row(line, None, f"not JSON: {exc.msg} at column {exc.colno}", raw)
            continue
        if not isinstance(record, dict):
            yield Row(line, None, "not a JSON object", raw)
            continue
        yield to_row(line, [record.get(name) for name in names], raw)


def read_rows(stream: IO[str], fmt: Format, columns: Columns) -> Iterator[Row]:
    return read_jsonl(stream, columns) if fmt == "jsonl" else read_csv(stream, columns)
