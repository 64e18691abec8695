"""Labelled training data: `title<TAB>label_id` files (the THUCNews layout) or CSV with named
columns, and the class file that names the labels.

Pure parsing: a bad row is reported with its line number and skipped, never fatal; a missing
file or column stops at once.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

# The label ids of the THUCNews files, and of a model trained without a class file.
THUCNEWS_LABELS = (
    "finance",
    "realty",
    "stocks",
    "education",
    "science",
    "society",
    "politics",
    "sports",
    "game",
    "entertainment",
)


class DataError(Exception):
    """The data cannot be used at all (missing file, no title/label column, no labels)."""


@dataclass
class LabelledData:
    titles: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    bad_rows: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)

    def __len__(self) -> int:
        return len(self.titles)


def read_labels(path: str | Path) -> list[str]:
    """One label name per line; line N names label id N."""
    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise DataError(f"cannot read the class file {path}: {exc.strerror}") from exc
    names = [n for n in names if n]
    if len(names) < 2:
        raise DataError(f"{path}: a class file needs at least two labels")
    return names


def _label(value: str, labels: list[str]) -> int:
    """A label id, or a label name from the class file."""
    value = value.strip()
    if value.isdigit():
        label = int(value)
        if label >= len(labels):
            raise ValueError(f"label id {label} is out of range (0..{len(labels) - 1})")
        return label
    if value in labels:
        return labels.index(value)
    raise ValueError(f"unknown label {value!r}")


def read_data(
    path: str | Path, labels: list[str], *, title_column: str = "title", label_column: str = "label"
) -> LabelledData:
    """Read `.csv` by column names, anything else as `title<TAB>label`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no data file {path}")
    if path.suffix.lower() == ".csv":
        return _read_csv(path, labels, title_column, label_column)
    data = LabelledData()
    with path.open(encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            title, tab, value = line.rstrip("\r\n").rpartition("\t")
            _add(
                data,
                line_number,
                title if tab else "",
                value if tab else "",
                labels,
                error=None if tab else "expected title<TAB>label",
            )
    return data


def _read_csv(path: Path, labels: list[str], title_column: str, label_column: str) -> LabelledData:
    data = LabelledData()
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {title_column, label_column} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}: no column {', '.join(sorted(missing))} in the header")
        start = reader.line_num + 1
        for row in reader:
            line, start = start, reader.line_num + 1
            _add(data, line, row.get(title_column) or "", row.get(label_column) or "", labels)
    return data


def _add(
    data: LabelledData,
    line: int,
    title: str,
    value: str,
    labels: list[str],
    *,
    error: str | None = None,
) -> None:
    if error is None and not title.strip():
        error = "empty title"
    if error is None:
        try:
            label = _label(value, labels)
        except ValueError as exc:
            error = str(exc)
    if error is not None:
        data.bad_rows.append((line, error))
        return
    data.titles.append(title.strip())
    data.labels.append(label)
