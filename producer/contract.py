"""The public wire contract: task and queue names, the message schema, and broker options.

Other applications depend on exactly this, in any language, so it changes only with
`CONTRACT_VERSION`. Nothing here imports Celery, torch or transformers.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

CONTRACT_VERSION = "1"

CLASSIFY_TASK = "newsq.classify"
CLASSIFY_QUEUE = "newsq.classify"
TRAIN_TASK = "newsq.train"
TRAIN_QUEUE = "newsq.train"

MAX_ARTICLES_PER_MESSAGE = 1024
MAX_ID_CHARS = 256
# Longer text is cut, not refused: the model only reads the first tokens anyway.
MAX_TITLE_CHARS = 1_000
MAX_CONTENT_CHARS = 100_000
MAX_SOURCE_CHARS = 256

SERIALIZER = "json"
# Redis has no native priorities: kombu emulates them with one list per step
# (`newsq.classify`, `newsq.classify:3`, ...), and lower numbers are served first.
PRIORITY_STEPS = (0, 3, 6, 9)
BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
    "priority_steps": list(PRIORITY_STEPS),
    "sep": ":",
    "queue_order_strategy": "priority",
}


def article_id(title: str, content: str | None) -> str:
    """The key of an article sent without `id`: sha256 of title + content, so resends dedupe."""
    return hashlib.sha256((title + (content or "")).encode("utf-8")).hexdigest()


# Checked inside pydantic-core (no Python call per field, which matters at bulk-ingest rates):
# NUL cannot be stored in PostgreSQL text, and a title needs one visible character. Lone
# surrogates (undecodable bytes kept by errors="surrogateescape") fail pydantic's own str check.
NO_NUL = r"^[^\x00]*$"
VISIBLE_NO_NUL = r"^[^\x00]*[^\x00\s][^\x00]*$"
# Text cut to these lengths before validation; an id is never cut (it is a key).
_CUT = {"title": MAX_TITLE_CHARS, "content": MAX_CONTENT_CHARS, "source": MAX_SOURCE_CHARS}


class Article(BaseModel):
    """One article as it travels. Unknown fields and wrong types are refused, long text is cut."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS, pattern=NO_NUL)
    title: str = Field(pattern=VISIBLE_NO_NUL)
    content: str | None = Field(None, pattern=NO_NUL)
    source: str | None = Field(None, pattern=NO_NUL)

    @model_validator(mode="before")
    @classmethod
    def _cut(cls, data: Any) -> Any:
        """Cut long text instead of refusing it, and read "" content or source as absent."""
        if type(data) is not dict:
            return data
        cut = None
        for name, limit in _CUT.items():
            value = data.get(name)
            if type(value) is str and (len(value) > limit or (not value and name != "title")):
                cut = cut if cut is not None else dict(data)
                cut[name] = value[:limit] or None
        return cut if cut is not None else data

    @property
    def key(self) -> str:
        """The caller's id, or the content hash when the caller gave none."""
        return self.id if self.id is not None else article_id(self.title, self.content)

    def with_key(self) -> Article:
        """The same article with its id filled in, as the client sends it."""
        return self if self.id is not None else self.model_copy(update={"id": self.key})


# A whole message's articles, checked or serialized in one call into pydantic-core (the client
# sending, the worker receiving): one call per article took more than twice as long.
ARTICLE_LIST = TypeAdapter(list[Article])


class ClassifyKwargs(BaseModel):
    """The kwargs of a `newsq.classify` message. Articles are checked one by one elsewhere,
    so that one bad article does not cost the good ones of the same message."""

    model_config = ConfigDict(extra="forbid", strict=True)

    articles: list[Any] = Field(min_length=1, max_length=MAX_ARTICLES_PER_MESSAGE)


_PATTERN_ERRORS = {
    NO_NUL: "contains a NUL character, which SQL text cannot store",
    VISIBLE_NO_NUL: "is empty or contains a NUL character",
}


def describe(error: ValidationError) -> str:
    """One readable line per problem: `title: Input should be a valid string; ...`."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        pattern = str((item.get("ctx") or {}).get("pattern"))
        if item["type"] == "string_pattern_mismatch" and pattern in _PATTERN_ERRORS:
            parts.append(f"{where} {_PATTERN_ERRORS[pattern]}")
        elif item["type"] == "string_unicode":
            parts.append(f"{where} is not valid text (a lone surrogate: undecodable bytes?)")
        else:
            parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def priority_lists(queue: str) -> list[str]:
    """The Redis lists that hold `queue`, one per priority step (`queue`, `queue:3`, ...)."""
    sep = BROKER_TRANSPORT_OPTIONS["sep"]
    return [f"{queue}{sep}{step}" if step else queue for step in PRIORITY_STEPS]


class TrainRequest(BaseModel):
    """The kwargs of a `newsq.train` message: data, base model and the training schedule."""

    model_config = ConfigDict(extra="forbid")

    run_id: int | None = Field(None, description="Set by NewsClient.train; created if absent.")
    train_file: str
    dev_file: str
    test_file: str | None = None
    class_file: str | None = Field(None, description="Label names; default: the THUCNews ten.")
    title_column: str = "title"
    label_column: str = "label"
    base_model: str = Field("small", description="small, base, or a Hugging Face name/path.")
    tokenizer: str = Field(
        "../shared/data/bert-base-chinese",
        description="Tokenizer + config folder for the named shapes.",
    )
    output_dir: str = "runs"
    epochs: float = Field(3.0, gt=0)
    learning_rate: float = Field(5e-4, gt=0)
    batch_size: int = Field(64, gt=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    warmup_steps: int = Field(0, ge=0, description="Overrides warmup_ratio when > 0.")
    weight_decay: float = Field(0.01, ge=0)
    eval_steps: int = Field(200, gt=0)
    early_stopping_patience: int = Field(3, gt=0)
    max_length: int = Field(32, gt=2, le=512)
    max_train_samples: int | None = Field(None, gt=0)
    mlm_epochs: float = Field(
        0.0, ge=0, description="Masked-LM pretraining on the training titles first (0: none)."
    )
    mlm_learning_rate: float = Field(5e-4, gt=0)
    trim_vocab: bool = Field(
        True,
        description="Named shapes only: keep just the vocabulary entries the training titles use.",
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    seed: int = 42
    promote: bool = False
    promote_if_better: bool = False
