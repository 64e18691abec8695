"""The JSON of messages: the worker's decoder decodes exactly what kombu's does, and the
client's encoder writes UTF-8 JSON that any decoder reads, without changing kombu's `json`."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from kombu.serialization import dumps as registry_dumps
from kombu.serialization import loads as registry_loads
from kombu.utils import json as kombu_json

from worker import serializer


def test_plain_messages_decode_as_kombu_decodes_them() -> None:
    body = [[], {"articles": [{"id": "a", "title": "央行降准", "content": None}]}, {}]
    text = kombu_json.dumps(body)
    assert serializer.loads(text) == kombu_json.loads(text) == body
    assert serializer.loads(text.encode()) == body
    assert serializer.loads(memoryview(text.encode())) == body


def test_type_tagged_values_still_come_back_as_python_objects() -> None:
    when = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    key = uuid.uuid4()
    text = kombu_json.dumps({"eta": when, "id": key, "raw": b"\x00\xff"})
    assert serializer.loads(text) == {"eta": when, "id": key, "raw": b"\x00\xff"}


def test_a_title_that_mentions_the_tag_is_left_as_text() -> None:
    body = {"articles": [{"title": 'JSON keys like "__type__" explained'}]}
    assert serializer.loads(kombu_json.dumps(body)) == body


def test_the_worker_app_decodes_json_messages_with_it() -> None:
    import worker.app  # noqa: F401  (installs the decoder, as the worker does)

    text = kombu_json.dumps({"articles": [{"title": "标题"}]})
    assert registry_loads(text, "application/json", "utf-8") == {"articles": [{"title": "标题"}]}
    from kombu.serialization import registry

    assert registry._decoders["application/json"] is serializer.loads


def test_what_orjson_refuses_decodes_as_the_standard_library_decodes_it() -> None:
    # A lone surrogate in one title must not cost the message's other articles (they are
    # validated one by one); big integers and NaN are valid to kombu's decoder too.
    articles = '"articles": [{"title": "\\ud800"}, {"title": "好"}]'
    text = "{" + articles + ', "n": [NaN, 10000000000000000000001]}'
    decoded = serializer.loads(text.encode())
    assert decoded["articles"] == [{"title": "\ud800"}, {"title": "好"}]
    assert decoded["n"][0] != decoded["n"][0] and decoded["n"][1] == 10**22 + 1


def test_the_client_encodes_bodies_as_utf8_json_and_leaves_kombus_json_alone() -> None:
    from producer.client import BODY_SERIALIZER

    body = [[], {"articles": [{"id": "a", "title": "央行宣布降准"}]}, {"callbacks": None}]
    content_type, encoding, payload = registry_dumps(body, serializer=BODY_SERIALIZER)
    assert (content_type, encoding) == ("application/json", "utf-8")
    assert "央行宣布降准".encode() in payload  # not six-byte \\u escapes
    assert json.loads(payload) == serializer.loads(payload) == body
    assert len(payload) < len(kombu_json.dumps(body))
    # The host application's own messages: kombu's encoder, which knows datetimes.
    when = datetime(2026, 11, 27, tzinfo=UTC)
    assert registry_dumps({"eta": when}, serializer="json")[2] == kombu_json.dumps({"eta": when})
    from kombu.serialization import registry

    assert registry.type_to_name["application/json"] == "json"
