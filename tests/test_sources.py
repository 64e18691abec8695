"""Reading messy CSV and JSON Lines files (pure: no Redis)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from producer.contract import MAX_CONTENT_CHARS, article_id
from producer.sources import (
    Columns,
    Row,
    SourceError,
    detect_encoding,
    open_text,
    read_rows,
)


def rows_of(
    path: Path, encoding: str = "auto", fmt: str = "csv", columns: Columns | None = None
) -> tuple[list[Row], str]:
    stream, used = open_text(str(path), encoding)
    with stream:
        return list(read_rows(stream, fmt, columns or Columns())), used  # type: ignore[arg-type]


def write(tmp_path: Path, text: str, encoding: str = "utf-8", name: str = "f.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_utf8_with_and_without_bom_and_gb18030_are_detected(tmp_path: Path) -> None:
    text = "id,title\n1,央行宣布降准\n"
    for encoding, expected in (
        ("utf-8", "utf-8"),
        ("utf-8-sig", "utf-8-sig"),
        ("gb18030", "gb18030"),
        ("gbk", "gb18030"),
    ):
        rows, used = rows_of(write(tmp_path, text, encoding))
        assert used == expected
        assert [r.article.title for r in rows if r.article] == ["央行宣布降准"], encoding


def test_bom_is_dropped_from_the_first_header_name_even_with_explicit_utf8(tmp_path: Path) -> None:
    rows, used = rows_of(write(tmp_path, "title\n标题\n", "utf-8-sig"), encoding="utf-8")
    assert used == "utf-8-sig" and rows[0].article is not None


def test_detect_encoding_ignores_a_multibyte_char_cut_by_the_sample_end() -> None:
    sample = "央行".encode()[:-1]
    assert detect_encoding(sample) == "utf-8"
    assert detect_encoding("央行".encode("gb18030")) == "gb18030"


def test_quoted_fields_with_newlines_and_commas_keep_line_numbers(tmp_path: Path) -> None:
    text = 'id,title,content\na,"标题, 带逗号","第一行\n第二行\n第三行"\nb,第二篇,正文\n'
    rows, _ = rows_of(write(tmp_path, text))
    assert [(r.line, r.article.id if r.article else None) for r in rows] == [(2, "a"), (5, "b")]
    assert rows[0].article is not None and rows[0].article.title == "标题, 带逗号"
    assert rows[0].article.content == "第一行\n第二行\n第三行"


def test_extra_and_missing_columns(tmp_path: Path) -> None:
    text = "url,title,extra\nhttp://x,只有标题,z\nhttp://y\n"
    rows, _ = rows_of(write(tmp_path, text))
    assert rows[0].article is not None
    assert rows[0].article.content is None and rows[0].article.key == article_id("只有标题", None)
    assert rows[1].article is None and rows[1].line == 3 and "title is empty" in str(rows[1].error)


def test_empty_whitespace_and_overlong(tmp_path: Path) -> None:
    long_content = "文" * (MAX_CONTENT_CHARS + 10)
    text = f'id,title,content\n1,,x\n2,"   ",x\n3,好标题,{long_content}\n\n4,最后,\n'
    rows, _ = rows_of(write(tmp_path, text))
    assert [(r.line, r.error is None) for r in rows] == [
        (2, False),
        (3, False),
        (4, True),
        (6, True),
    ]
    assert rows[2].article is not None and len(rows[2].article.content or "") == MAX_CONTENT_CHARS


def test_undecodable_bytes_make_that_row_a_reject(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(b"id,title\n1,good\n2,bad \xff\xfe bytes\n3,fine\n")
    rows, _ = rows_of(path, encoding="utf-8")
    assert [r.error is None for r in rows] == [True, False, True]
    assert "not valid text" in str(rows[1].error) and rows[1].line == 3


def test_missing_title_column_and_empty_file_stop_at_once(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no column 'title'.*headline"):
        rows_of(write(tmp_path, "id,headline\n1,x\n"))
    with pytest.raises(SourceError, match="empty"):
        rows_of(write(tmp_path, ""))
    with pytest.raises(SourceError, match="cannot read"):
        open_text(str(tmp_path / "missing.csv"), "auto")
    rows, _ = rows_of(write(tmp_path, "id,headline\n1,x\n"), columns=Columns(title="headline"))
    assert rows[0].article is not None and rows[0].article.title == "x"


def test_json_lines(tmp_path: Path) -> None:
    text = (
        '{"id": 7, "title": "数字id", "extra": true}\n'
        "\n"
        '{"title": "无id", "content": "正文"}\n'
        "not json\n"
        '["a list"]\n'
        '{"title": 12}\n'
    )
    rows, _ = rows_of(write(tmp_path, text, name="f.jsonl"), fmt="jsonl")
    assert [r.line for r in rows] == [1, 3, 4, 5, 6]
    assert rows[0].article is not None and rows[0].article.id == "7"
    assert rows[1].article is not None and rows[1].article.id == article_id("无id", "正文")
    assert "not JSON" in str(rows[2].error)
    assert "JSON object" in str(rows[3].error)
    assert "valid string" in str(rows[4].error)


def test_stdin_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = io.TextIOWrapper(io.BytesIO("title\n来自标准输入\n".encode()))
    monkeypatch.setattr("sys.stdin", fake)
    stream, used = open_text("-", "auto")
    rows = list(read_rows(stream, "csv", Columns()))
    assert used == "utf-8" and rows[0].article is not None
