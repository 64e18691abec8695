"""The worker's JSON decoder: kombu's, without its Python call for every JSON object.

kombu decodes JSON with an `object_hook` that turns `{"__type__": ..., "__value__": ...}` objects
back into datetimes, UUIDs or bytes. That hook runs once per object: for a 256-article message,
257 Python calls that cost a fifth of the worker's GIL time at 12,000 articles/s. A message
whose text holds no `"__type__"` has nothing for the hook to do, so it is decoded by the C
decoder alone; any other message goes through kombu's own `loads`, unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from kombu.serialization import register
from kombu.utils import json as kombu_json

TYPE_TAG = '"__type__"'


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    text = data if isinstance(data, str) else bytes(data).decode("utf-8")
    if TYPE_TAG in text:
        return kombu_json.loads(text)
    return json.loads(text)


def install() -> None:
    """Serve kombu's `json` content type with this decoder (kombu's encoder is kept)."""
    register(
        "json",
        kombu_json.dumps,
        loads,
        content_type="application/json",
        content_encoding="utf-8",
    )
