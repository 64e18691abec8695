"""Bulk writes: one statement per table per batch, idempotent under redelivery.

Upserts use the dialect's own `INSERT ... ON CONFLICT`, so a message that is delivered twice
overwrites its rows instead of adding to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Engine, Insert
from sqlalchemy.dialects import postgresql, sqlite

from db.models import ArticleRow, Base, ModelVersion, Prediction, Reject, utcnow
from db.pg_copy import CopyUpsert


class ArticleRecord(NamedTuple):
    """A tuple, not a dataclass: the COPY path sends it as a row as it is (a frozen dataclass
    costs a microsecond per row to build, and then a dict to read)."""

    id: str
    title: str
    content: str | None
    source: str | None


class PredictionRecord(NamedTuple):
    article_id: str
    label_id: int
    label: str
    score: float
    probs: list[float]


@dataclass(frozen=True, slots=True)
class RejectRecord:
    reason: str
    payload: str
    position: int | None = None
    article_id: str | None = None


def storable(text: str) -> str:
    """Escape what SQL text cannot hold: NUL (PostgreSQL) and lone surrogates (not UTF-8)."""
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _insert(engine: Engine, table: type[Base]) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT (PostgreSQL and SQLite >= 3.24)."""
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table)
    if engine.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect: {engine.dialect.name}")


def _upsert(engine: Engine, table: type[Base], keys: list[str], update: list[str]) -> Insert:
    stmt = _insert(engine, table)
    if not update:
        return stmt.on_conflict_do_nothing(index_elements=keys)  # type: ignore[no-any-return]
    return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=keys, set_={name: stmt.excluded[name] for name in update}
    )


# The records' fields, then the columns the store adds.
ARTICLE_COLUMNS = [*ArticleRecord._fields, "received_at"]
PREDICTION_COLUMNS = [*PredictionRecord._fields, "model_version", "created_at"]


class ResultStore:
    """Writes of the classify path. Thread-safe: each call takes its own pooled connection."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._articles = _upsert(engine, ArticleRow, ["id"], ["title", "content", "source"])
        self._predictions = _upsert(
            engine,
            Prediction,
            ["article_id", "model_version"],
            ["label_id", "label", "score", "probs", "created_at"],
        )
        self._rejects = _upsert(engine, Reject, ["message_id", "position"], [])
        self._copy: tuple[CopyUpsert, CopyUpsert] | None = None
        if engine.dialect.name == "postgresql":
            self._copy = (
                CopyUpsert(ArticleRow.__table__, ARTICLE_COLUMNS, ["id"], ARTICLE_COLUMNS[1:4]),  # type: ignore[arg-type]
                CopyUpsert(
                    Prediction.__table__,  # type: ignore[arg-type]
                    PREDICTION_COLUMNS,
                    ["article_id", "model_version"],
                    [*PredictionRecord._fields[1:], "created_at"],
                ),
            )

    def write_batch(
        self,
        articles: Sequence[ArticleRecord],
        predictions: Sequence[PredictionRecord],
        model_version: str,
    ) -> None:
        """Articles and their predictions in one transaction: both are there, or neither."""
        now = utcnow()
        # A message may carry the same id twice; ON CONFLICT cannot touch one row twice in one
        # statement, so keep the last occurrence (as sequential upserts would).
        unique_articles = {a.id: a for a in articles}.values()
        unique_predictions = {p.article_id: p for p in predictions}.values()
        with self.engine.begin() as conn:
            if self._copy is not None:
                self._copy[0](conn, ((*a, now) for a in unique_articles))
                tail = (model_version, now)
                rows = ((*p[:4], _json_floats(p.probs), *tail) for p in unique_predictions)
                self._copy[1](conn, rows)
                return
            added: dict[str, Any] = {"received_at": now}
            conn.execute(self._articles, [{**a._asdict(), **added} for a in unique_articles])
            added = {"model_version": model_version, "created_at": now}
            conn.execute(self._predictions, [{**p._asdict(), **added} for p in unique_predictions])

    def write_rejects(self, rejects: Sequence[RejectRecord], message_id: str | None) -> None:
        if not rejects:
            return
        now = utcnow()
        rows = [
            {
                "reason": storable(r.reason),
                "payload": storable(r.payload),
                "position": r.position,
                "article_id": storable(r.article_id) if r.article_id is not None else None,
                "message_id": message_id,
                "created_at": now,
            }
            for r in rejects
        ]
        with self.engine.begin() as conn:
            conn.execute(self._rejects, rows)

    def register_model_version(self, version: str, path: str) -> None:
        """Make sure predictions of `version` have a row to point at (kept if it exists)."""
        row = {"version": version, "path": path, "created_at": utcnow()}
        with self.engine.begin() as conn:
            conn.execute(_upsert(self.engine, ModelVersion, ["version"], []), [row])


def _json_floats(values: list[float]) -> str:
    """A JSON array of finite floats: repr is their shortest exact form, and this is several
    times cheaper per row than json.dumps."""
    return "[" + ",".join(map(repr, values)) + "]"
