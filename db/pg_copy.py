"""PostgreSQL bulk upsert through COPY: a batch is copied into a temporary staging table as one
block of COPY text, then moved into the real tables by `INSERT ... SELECT ... ON CONFLICT`.

COPY moves rows several times faster than a multi-row INSERT (whose parameters SQLAlchemy renders
row by row in Python, holding the GIL the batcher's other threads need), and the INSERT ... SELECT
keeps the upsert: a redelivered message overwrites its rows, never adds. The COPY text is built
column by column with C-level string joins (`copy_text`): no Python call per row or per value.
Every statement comes from SQLAlchemy constructs or psycopg's `sql` composition.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Column, Connection, MetaData, Table
from sqlalchemy.schema import CreateTable

NULL = r"\N"
# What COPY's text format escapes inside a value (the backslash first).
_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))
# Joins a column's values while escaping them together; SQL text cannot hold NUL, and the
# contract refuses it in every text field, so no value contains it.
_SEPARATOR = "\x00"


def escape_text(values: Sequence[str | None]) -> list[str]:
    """Values as COPY text fields: escaped, None as NULL. The common cases (all None, or no
    None) cost a few C calls for the whole column."""
    if not values:
        return []
    if values[0] is None and values.count(None) == len(values):
        return [NULL] * len(values)
    if None in values:
        return [NULL if value is None else _escape(value) for value in values]
    return _escape(_SEPARATOR.join(values)).split(_SEPARATOR)  # type: ignore[arg-type]


def _escape(text: str) -> str:
    for char, escaped in _ESCAPES:
        if char in text:
            text = text.replace(char, escaped)
    return text


def copy_text(columns: Sequence[Sequence[str]]) -> str:
    """Rows of COPY text from columns of already formatted fields."""
    if not columns or not columns[0]:
        return ""
    return "\n".join(map("\t".join, zip(*columns, strict=True))) + "\n"


class CopyStage:
    """A session-local staging table, emptied at each commit."""

    def __init__(self, name: str, columns: list[Column[Any]]) -> None:
        self.table = Table(
            name,
            MetaData(),
            *columns,
            prefixes=["TEMPORARY"],
            postgresql_on_commit="DELETE ROWS",
        )
        # IF NOT EXISTS: one statement, created once per connection.
        self._create = CreateTable(self.table, if_not_exists=True)
        self._copy = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(name), sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)
        )

    def fill(self, conn: Connection, text: str) -> None:
        """Inside the caller's transaction: COPY `text` (see `copy_text`) into the stage."""
        conn.execute(self._create)
        cursor: psycopg.Cursor[Any] = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr,assignment]
        with cursor, cursor.copy(self._copy) as copy:
            copy.write(text)
