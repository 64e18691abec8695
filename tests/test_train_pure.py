"""Training data parsing and metrics, without a model or services."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.train_data import DataError, read_data, read_labels
from worker.train_metrics import classification_report

LABELS = ["finance", "sports", "game"]


def test_tab_file_with_bad_rows_reported_by_line(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text(
        "股市大涨\t0\n\n湖人夺冠\t1\n没有标签\n\t2\n越界\t7\n名字也行\tgame\n", encoding="utf-8"
    )
    data = read_data(path, LABELS)
    assert data.titles == ["股市大涨", "湖人夺冠", "名字也行"]
    assert data.labels == [0, 1, 2]
    assert data.bad_rows == [
        (4, "expected title<TAB>label"),
        (5, "empty title"),
        (6, "label id 7 is out of range (0..2)"),
    ]


def test_csv_with_named_columns(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text('headline,category,x\n"多行\n标题",sports,1\n游戏,bogus,2\n', encoding="utf-8")
    data = read_data(path, LABELS, title_column="headline", label_column="category")
    assert data.titles == ["多行\n标题"] and data.labels == [1]
    assert data.bad_rows == [(4, "unknown label 'bogus'")]
    with pytest.raises(DataError, match="no column"):
        read_data(path, LABELS)


def test_class_file_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "class.txt").write_text("a\nb\n\n", encoding="utf-8")
    assert read_labels(tmp_path / "class.txt") == ["a", "b"]
    with pytest.raises(DataError, match="cannot read"):
        read_labels(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="no data file"):
        read_data(tmp_path / "missing.txt", LABELS)


def test_report_numbers() -> None:
    actual = [0, 0, 1, 1, 2, 2]
    predicted = [0, 1, 1, 1, 2, 0]
    report = classification_report(predicted, actual, LABELS)
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    finance = report["per_class"][0]
    assert finance["precision"] == pytest.approx(0.5) and finance["recall"] == pytest.approx(0.5)
    assert report["per_class"][1]["precision"] == pytest.approx(2 / 3)
    assert report["macro_recall"] == pytest.approx((0.5 + 1 + 0.5) / 3)
