"""Splitting a message into good articles and rejects (pure, no services)."""

from __future__ import annotations

import json
from typing import Any

from db.store import storable
from producer.contract import MAX_TITLE_CHARS
from worker.intake import WHOLE_MESSAGE, parse_message


def test_good_and_bad_articles_of_one_message_are_separated() -> None:
    articles = [
        {"id": "ok-1", "title": "央行宣布降准"},
        {"id": "no-title", "content": "正文"},
        {"id": "empty", "title": ""},
        {"id": "wrong-type", "title": ["not", "a", "string"]},
        {"id": "extra", "title": "t", "colour": "red"},
        "not an object",
        {"id": "ok-2", "title": "湖人队赢球", "content": None, "source": "wire"},
    ]
    intake = parse_message((), {"articles": articles})
    assert [a.key for a in intake.articles] == ["ok-1", "ok-2"]
    assert intake.positions == [0, 6]
    reasons = {r.position: r.reason for r in intake.rejects}
    assert set(reasons) == {1, 2, 3, 4, 5}
    assert "title" in reasons[1] and "required" in reasons[1]
    assert "title is empty" in reasons[2]
    assert "valid string" in reasons[3]
    assert "colour" in reasons[4] and "Extra inputs" in reasons[4]
    assert "JSON object" in reasons[5]
    by_position = {r.position: r for r in intake.rejects}
    assert by_position[1].article_id == "no-title"
    assert json.loads(by_position[4].payload) == articles[4]


def test_wrong_schema_message_is_one_whole_message_reject() -> None:
    cases: list[dict[str, Any]] = [
        {},
        {"articles": "x"},
        {"articles": []},
        {"articles": [{}], "extra": 1},
    ]
    for kwargs in cases:
        intake = parse_message((), kwargs)
        assert intake.articles == []
        assert len(intake.rejects) == 1
        assert intake.rejects[0].position == WHOLE_MESSAGE
        assert "newsq.classify schema" in intake.rejects[0].reason


def test_positional_arguments_are_refused() -> None:
    intake = parse_message(([{"title": "t"}],), {})
    assert intake.articles == []
    assert "positional" in intake.rejects[0].reason


def test_over_long_title_is_truncated_and_kept() -> None:
    intake = parse_message((), {"articles": [{"title": "长" * 5000}]})
    assert intake.rejects == []
    assert len(intake.articles[0].title) == MAX_TITLE_CHARS


def test_nul_characters_are_refused_per_article_and_escaped_in_payloads() -> None:
    intake = parse_message((), {"articles": [{"id": "n", "title": "a\x00b"}, {"title": "ok"}]})
    assert [a.title for a in intake.articles] == ["ok"]
    assert "NUL" in intake.rejects[0].reason, intake.rejects[0].reason
    assert "\x00" not in intake.rejects[0].payload


def test_storable_escapes_what_sql_text_cannot_hold() -> None:
    assert storable("标题\ud800尾\x00") == "标题\\ud800尾\\x00"
    assert storable("plain 🙂 text") == "plain 🙂 text"
