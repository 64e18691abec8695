"""Predictions without foreign keys: the per-row checks were what bounded the GPU workers' writes.

Each upserted prediction checked that its article and its model version exist, and the check of
`model_version` takes a share lock on the same `model_versions` row for every row of every writer.
On one H200 with 8 bert-base workers on PostgreSQL (benchmarks/gpu.sh, 2026-11-28), dropping
both raised the whole run from 45,642 to 55,029 articles/s (0.64 -> 0.77 of the bare model;
sustained 0.80 -> 0.92) and cut the server's CPU per article from 65.8 to 46.5 µs; on 2 CPU cores
the null model gained 10% in five interleaved pairs out of five (README, Benchmarks).

What they guarded is kept by the one writer of these rows: a worker registers its model version
before it serves, and writes a batch's articles and predictions in one transaction (db/store.py).
What they no longer do: refuse the delete of an article or a version that still has predictions,
so whoever prunes deletes its predictions with it (`latest_predictions` joins articles and never
shows an orphan).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# predictions' columns -> what they referenced
REFERENCES = {"article_id": ("articles", "id"), "model_version": ("model_versions", "version")}
# SQLite's constraints have no names; batch mode names them by this convention to drop them
NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s"}


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        for key in sa.inspect(bind).get_foreign_keys("predictions"):
            assert key["name"] is not None  # a server database names every constraint
            op.drop_constraint(key["name"], "predictions", type_="foreignkey")
        return
    with _sqlite_batch() as batch:
        for column in REFERENCES:
            batch.drop_constraint(f"fk_predictions_{column}", type_="foreignkey")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        for column, (table, referred) in REFERENCES.items():
            op.create_foreign_key(None, "predictions", table, [column], [referred])
        return
    with _sqlite_batch() as batch:
        for column, (table, referred) in REFERENCES.items():
            batch.create_foreign_key(f"fk_predictions_{column}", table, [column], [referred])


@contextmanager
def _sqlite_batch() -> Iterator[BatchOperations]:
    """predictions altered in batch mode: SQLite changes a constraint by copying the table, and
    while the copy replaces it the view would name a missing table, so the view is dropped for
    the block and created again as it was."""
    bind = op.get_bind()
    view = "SELECT sql FROM sqlite_master WHERE type = 'view' AND name = 'latest_predictions'"
    definition = str(bind.execute(sa.text(view)).scalar_one())
    op.execute("DROP VIEW latest_predictions")
    with op.batch_alter_table("predictions", naming_convention=NAMING) as batch:
        yield batch
    op.execute(definition)
