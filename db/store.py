"""Bulk writes: one statement per table per batch, idempotent under redelivery.

Upserts use the dialect's own `INSERT ... ON CONFLICT`, so a message that is delivered twice
overwrites its rows instead of adding to them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Insert
from sqlalchemy.dialects import postgresql, sqlite

from db.models import ArticleRow, Base, ModelVersion, Prediction, Reject, utcnow
from db.pg_copy import CopyUpsert


@dataclass(frozen=True, slots=True)
class ArticleRecord:
    id: str
    title: str
    content: str | None
    source: str | None


@dataclass(frozen=True, slots=True)
class PredictionRecord:
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


ARTICLE_COLUMNS = ["id", "title", "content", "source", "received_at"]
PREDICTION_COLUMNS = [
    "article_id",
    "model_version",
    "label_id",
    "label",
    "score",
    "probs",
    "created_at",
]


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
                    PREDICTION_COLUMNS[2:],
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
        article_rows = {a.id: {**_asdict(a), "received_at": now} for a in articles}
        prediction_rows = {
            p.article_id: {**_asdict(p), "model_version": model_version, "created_at": now}
            for p in predictions
        }
        with self.engine.begin() as conn:
            if self._copy is not None:
                for row in prediction_rows.values():
                    row["probs"] = json.dumps(row["probs"])
                self._copy[0](conn, article_rows.values())
                self._copy[1](conn, prediction_rows.values())
                return
            conn.execute(self._articles, list(article_rows.values()))
            conn.execute(self._predictions, list(prediction_rows.values()))

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


def _asdict(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}
