"""The public contract: names, schema, ids, and that the client side stays light."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from producer.client import ArticleLike, to_article, validated
from producer.contract import (
    MAX_CONTENT_CHARS,
    MAX_TITLE_CHARS,
    Article,
    ClassifyKwargs,
    article_id,
    describe,
)


def test_names_are_the_documented_ones() -> None:
    from producer import contract

    assert (contract.CLASSIFY_TASK, contract.CLASSIFY_QUEUE) == ("newsq.classify", "newsq.classify")
    assert (contract.TRAIN_TASK, contract.TRAIN_QUEUE) == ("newsq.train", "newsq.train")
    assert contract.SERIALIZER == "json"


def test_missing_id_is_the_sha256_of_title_and_content() -> None:
    expected = hashlib.sha256("标题正文".encode()).hexdigest()
    assert article_id("标题", "正文") == expected
    assert Article(title="标题", content="正文").key == expected
    assert Article(title="标题").key == hashlib.sha256("标题".encode()).hexdigest()
    assert Article(id="mine", title="标题").key == "mine"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"content": "x"}, "title: Field required"),
        ({"title": "   "}, "title is empty"),
        ({"title": "a\x00b"}, "title is empty or contains a NUL"),
        ({"title": "t", "content": "a\x00"}, "content contains a NUL character"),
        ({"title": "bad \udcff"}, "title is not valid text"),
        ({"title": 42}, "title: Input should be a valid string"),
        ({"title": "t", "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"title": "t", "id": ""}, "id: String should have at least 1 character"),
    ],
)
def test_bad_articles_are_refused_with_a_readable_reason(
    raw: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ValidationError) as info:
        Article.model_validate(raw)
    assert fragment in describe(info.value)


def test_over_long_text_is_cut_not_refused() -> None:
    article = Article(title="长" * (MAX_TITLE_CHARS + 50), content="文" * (MAX_CONTENT_CHARS + 1))
    assert len(article.title) == MAX_TITLE_CHARS
    assert article.content is not None and len(article.content) == MAX_CONTENT_CHARS


def test_a_message_holds_1_to_1024_articles() -> None:
    ClassifyKwargs.model_validate({"articles": [{"title": "t"}] * 1024})
    for count in (0, 1025):
        with pytest.raises(ValidationError):
            ClassifyKwargs.model_validate({"articles": [{"title": "t"}] * count})


def test_client_accepts_dicts_and_tuples() -> None:
    assert to_article({"title": "t", "source": "s"}).source == "s"
    assert to_article(("a1", "t", None)).key == "a1"
    assert to_article((None, "t")).key == article_id("t", None)
    with pytest.raises(ValueError, match="tuple"):
        to_article("just a string")


def test_the_client_checks_a_list_of_dicts_in_one_call_as_it_would_one_by_one() -> None:
    items: list[ArticleLike] = [
        {"title": "t", "content": ""},  # "" content reads as absent
        {"id": "a2", "title": "长" * (MAX_TITLE_CHARS + 5), "source": "s"},  # cut, not refused
    ]
    assert validated(items) == [to_article(item) for item in items]
    assert validated([*items, ("a3", "t")])[2].key == "a3"  # tuples take the slow path
    with pytest.raises(ValueError) as info:
        validated([*items, {"title": " "}, {"title": 42}])
    assert str(info.value) == "article 2: title is empty or contains a NUL character"


def test_importing_the_producer_does_not_import_torch_or_transformers() -> None:
    code = (
        "import sys, json, producer, producer.client, producer.contract;"
        "print(json.dumps([m for m in ('torch', 'transformers', 'worker') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
