"""Training progress on the run row, so `newsq train --follow` needs no result backend.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("progress", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("progress")
