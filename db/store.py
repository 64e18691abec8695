"""Bulk writes: one statement per table per batch, idempotent under redelivery.

Upserts use the dialect's own `INSERT ... ON CONFLICT`, so a message that is delivered twice
overwrites its rows instead of adding to them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from itertools import repeat
from typing import Any

import numpy as np
import orjson
from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Insert,
    String,
    Text,
    bindparam,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from db.models import ArticleRow, Base, ModelVersion, Prediction, Reject, utcnow
from db.pg_copy import CopyStage, copy_text, escape_text

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ResultColumns:
    """Classified articles, one list per column: the writers turn columns into COPY text or
    driver rows with C-level joins and zips, where a record object per row cost more Python
    time than the whole rest of the write."""

    ids: list[str]
    titles: list[str]
    contents: list[str | None]
    sources: list[str | None]
    label_ids: list[int]
    labels: list[str]
    scores: list[float]
    probs: np.ndarray  # [rows, labels] class probabilities, stored as JSON arrays

    def __len__(self) -> int:
        return len(self.ids)

    def last_per_id(self) -> ResultColumns:
        """Without earlier rows of a repeated id: a message may carry one id twice, and
        ON CONFLICT cannot touch one row twice in one statement (sequential upserts would
        leave the last)."""
        last = {key: row for row, key in enumerate(self.ids)}
        if len(last) == len(self.ids):
            return self
        keep = sorted(last.values())
        return ResultColumns(
            ids=[self.ids[row] for row in keep],
            titles=[self.titles[row] for row in keep],
            contents=[self.contents[row] for row in keep],
            sources=[self.sources[row] for row in keep],
            label_ids=[self.label_ids[row] for row in keep],
            labels=[self.labels[row] for row in keep],
            scores=[self.scores[row] for row in keep],
            probs=self.probs[keep],
        )


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
    return _on_conflict_update(stmt, keys, update)


def _on_conflict_update(stmt: Any, keys: list[str], update: list[str]) -> Insert:
    """`stmt` (a dialect's INSERT) overwriting the `update` columns of a row whose `keys` exist."""
    return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=keys, set_={name: stmt.excluded[name] for name in update}
    )


# How long a warm-up waits for a locked table before the worker starts without it.
WARM_LOCK_TIMEOUT = "1s"
ARTICLE_COLUMNS = ["id", "title", "content", "source", "received_at"]
ARTICLE_UPDATE = ["title", "content", "source"]
PREDICTION_UPDATE = ["label_id", "label", "score", "probs", "created_at"]
PREDICTION_KEYS = ["article_id", "model_version"]
PREDICTION_COLUMNS = [*PREDICTION_KEYS, "label_id", "label", "score", "probs", "created_at"]


class ResultStore:
    """Writes of the classify path. Thread-safe: each call takes its own pooled connection."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._rejects = _upsert(engine, Reject, ["message_id", "position"], [])
        self._plan = _CopyPlan() if engine.dialect.name == "postgresql" else _RowsPlan(engine)

    def write_batch(self, results: ResultColumns, model_version: str) -> None:
        """Articles and their predictions in one transaction: both are there, or neither."""
        results = results.last_per_id()
        if not len(results):
            return
        probs = json_rows(results.probs)
        now = utcnow()
        with self.engine.begin() as conn:
            self._plan.write(conn, results, probs, model_version, now)

    def warm_up(self, connections: int) -> None:
        """Open `connections` pooled connections at once and ready each for the writes, before
        the worker consumes: each writer's first batch would otherwise pay for opening its
        connection and, on PostgreSQL, for creating the staging table and planning both upserts
        on it (a first write took 6.4 ms against 2.4 after it, this machine), a cost that light
        load's first articles carry as latency. Nothing is written. Tables that stay locked
        (a migration, an operator) cost the warm-up, never the start."""
        try:
            with ExitStack() as held:  # at once: one pooled connection each
                for _ in range(connections):
                    self._plan.warm(held.enter_context(self.engine.begin()))
        except OperationalError as exc:
            log.warning("writers start cold: %s", str(exc).splitlines()[0])

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


def json_rows(probs: np.ndarray) -> list[str]:
    """Each row of a probability matrix as a JSON array, rounded to 6 places: one orjson call
    for the whole matrix, cut into rows (a number never contains "],["). orjson writes the
    numpy array in Rust: a 150-row batch took ~90 µs against ~580 µs through `json.dumps`."""
    if not len(probs):
        return []
    # float64 first: a float32 rounded to 6 places prints 17 digits (0.12345699965953827)
    rounded = np.round(probs.astype(np.float64), 6)
    text = orjson.dumps(rounded, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    return text[1:-1].replace("],[", "]\x00[").split("\x00")


class _DriverRows:
    """An upsert compiled once to the driver's SQL, its rows handed to the driver's executemany
    as tuples zipped from columns: SQLAlchemy's per-row parameter processing (a dict per row, a
    bind processor per value) took a third of a GPU worker's busy time on SQLite. A constant
    column is an itertools.repeat; values go through the column's bind processor once each,
    per row only where one is needed (e.g. datetimes on SQLite)."""

    def __init__(self, statement: Insert, engine: Engine, columns: list[str]) -> None:
        compiled = statement.compile(dialect=engine.dialect, column_keys=columns)
        self.sql = str(compiled)
        self.order: list[str] = list(compiled.positiontup or [])
        if not compiled.positional or sorted(self.order) != sorted(columns):
            raise NotImplementedError(f"{engine.dialect.name}: expected positional {columns}")
        dialect = engine.dialect
        self.processors = {
            name: compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in self.order
        }

    def execute(self, conn: Connection, **columns: Iterable[Any]) -> None:
        ordered = []
        for name in self.order:
            column, process = columns[name], self.processors.get(name)
            if isinstance(column, repeat):
                column = repeat(process(next(column)) if process else next(column))
            elif process is not None:
                column = map(process, column)
            ordered.append(column)
        # not strict: the constant columns are endless repeats
        conn.exec_driver_sql(self.sql, list(zip(*ordered, strict=False)))


class _RowsPlan:
    """The path of other dialects (SQLite): both upserts with rows straight to the driver."""

    def __init__(self, engine: Engine) -> None:
        self.articles = _DriverRows(
            _upsert(engine, ArticleRow, ["id"], ARTICLE_UPDATE), engine, ARTICLE_COLUMNS
        )
        # Probabilities arrive as JSON text (`json_rows`): bound as text, not re-encoded.
        predictions = _upsert(engine, Prediction, PREDICTION_KEYS, PREDICTION_UPDATE).values(
            probs=bindparam("probs", type_=Text)
        )
        self.predictions = _DriverRows(predictions, engine, PREDICTION_COLUMNS)

    def warm(self, conn: Connection) -> None:
        """Nothing past the connection: both statements were compiled at init."""

    def write(
        self,
        conn: Connection,
        results: ResultColumns,
        probs: list[str],
        model_version: str,
        now: datetime,
    ) -> None:
        self.articles.execute(
            conn,
            id=results.ids,
            title=results.titles,
            content=results.contents,
            source=results.sources,
            received_at=repeat(now),
        )
        self.predictions.execute(
            conn,
            article_id=results.ids,
            label_id=results.label_ids,
            label=results.labels,
            score=results.scores,
            probs=probs,
            model_version=repeat(model_version),
            created_at=repeat(now),
        )


class _CopyPlan:
    """The PostgreSQL path: one COPY of the batch into a staging table, then two upserts from
    it. The write's constants (model version, time) are parameters, not per-row fields."""

    def __init__(self) -> None:
        articles, predictions = ArticleRow.__table__.c, Prediction.__table__.c
        self.stage = CopyStage(
            "newsq_stage_results",
            [
                Column("id", articles.id.type),
                Column("title", articles.title.type),
                Column("content", articles.content.type),
                Column("source", articles.source.type),
                Column("label_id", predictions.label_id.type),
                Column("label", predictions.label.type),
                Column("score", predictions.score.type),
                Column("probs", predictions.probs.type),
            ],
        )
        staged = self.stage.table.c
        now = bindparam("now", type_=DateTime(timezone=True))
        stmt = postgresql.insert(ArticleRow).from_select(
            ARTICLE_COLUMNS,
            select(staged.id, staged.title, staged.content, staged.source, now).order_by(staged.id),
        )
        self.articles = _on_conflict_update(stmt, ["id"], ARTICLE_UPDATE)
        stmt = postgresql.insert(Prediction).from_select(
            PREDICTION_COLUMNS,
            select(
                staged.id,
                bindparam("version", type_=String),
                staged.label_id,
                staged.label,
                staged.score,
                staged.probs,
                now,
            ).order_by(staged.id),
        )
        self.predictions = _on_conflict_update(stmt, PREDICTION_KEYS, PREDICTION_UPDATE)

    def warm(self, conn: Connection) -> None:
        """The write of no rows: the stage created on this connection, both upserts compiled
        and planned. Waits at most WARM_LOCK_TIMEOUT for the tables' locks."""
        wait = text("SELECT set_config('lock_timeout', :wait, true)")  # for this transaction
        conn.execute(wait, {"wait": WARM_LOCK_TIMEOUT})
        no_rows = ResultColumns([], [], [], [], [], [], [], np.empty((0, 0), dtype=np.float32))
        self.write(conn, no_rows, [], "", utcnow())

    def write(
        self,
        conn: Connection,
        results: ResultColumns,
        probs: list[str],
        model_version: str,
        now: datetime,
    ) -> None:
        text = copy_text(
            [
                escape_text(results.ids),
                escape_text(results.titles),
                escape_text(results.contents),
                escape_text(results.sources),
                list(map(str, results.label_ids)),
                escape_text(results.labels),
                list(map(repr, results.scores)),
                probs,
            ]
        )
        self.stage.fill(conn, text)
        conn.execute(self.articles, {"now": now})
        conn.execute(self.predictions, {"now": now, "version": model_version})
