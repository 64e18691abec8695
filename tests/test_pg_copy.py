"""The pure formatting behind the bulk write: COPY text fields and probability JSON."""

from __future__ import annotations

import json

import numpy as np

from db.pg_copy import NULL, copy_text, escape_text
from db.store import json_rows


def test_escape_text_escapes_what_copy_reads_specially() -> None:
    values = ["plain", "a\tb", "x\ny", "c\rr", "back\\slash", "\\N", "普通"]
    assert escape_text(values) == [
        "plain",
        "a\\tb",
        "x\\ny",
        "c\\rr",
        "back\\\\slash",
        "\\\\N",
        "普通",
    ]


def test_escape_text_writes_none_as_null() -> None:
    assert escape_text([None, None]) == [NULL, NULL]
    assert escape_text(["a\tb", None]) == ["a\\tb", NULL]
    assert escape_text([]) == []


def test_copy_text_is_one_line_per_row() -> None:
    assert copy_text([["1", "2"], ["a", "b"]]) == "1\ta\n2\tb\n"
    assert copy_text([[], []]) == ""


def test_json_rows_are_rounded_json_arrays_one_per_row() -> None:
    probs = np.array([[0.123456789, 0.876543211], [1.0, 0.0]], dtype=np.float32)
    rows = json_rows(probs)
    assert [json.loads(row) for row in rows] == [[0.123457, 0.876543], [1.0, 0.0]]
    assert json_rows(probs[:1]) == ["[0.123457,0.876543]"]
    assert json_rows(np.zeros((0, 2), dtype=np.float32)) == []
