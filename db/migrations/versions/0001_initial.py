"""Initial schema: articles, predictions, rejects, model_versions, training_runs, results view.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)

# Per article: the prediction of the promoted model if there is one, else the newest prediction.
LATEST_PREDICTIONS = """
CREATE VIEW latest_predictions AS
SELECT ranked.article_id, a.title, a.source, ranked.label, ranked.label_id, ranked.score,
       ranked.model_version, ranked.probs, ranked.created_at AS classified_at
FROM (
    SELECT p.*,
           ROW_NUMBER() OVER (
               PARTITION BY p.article_id
               ORDER BY CASE WHEN p.model_version = (
                            SELECT mv.version FROM model_versions mv
                            WHERE mv.promoted_at IS NOT NULL
                            ORDER BY mv.promoted_at DESC LIMIT 1)
                        THEN 0 ELSE 1 END,
                        p.created_at DESC, p.id DESC
           ) AS rn
    FROM predictions p
) ranked
JOIN articles a ON a.id = ranked.article_id
WHERE ranked.rn = 1
"""


def upgrade() -> None:
    op.create_table(
        "articles",
        sa.Column("id", sa.String(256), primary_key=True),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("content", sa.Text),
        sa.Column("source", sa.String(256)),
        sa.Column("received_at", TS, nullable=False),
    )
    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON),
        sa.Column("confusion_matrix", sa.JSON),
        sa.Column("best_step", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("output_dir", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
    )
    op.create_table(
        "model_versions",
        sa.Column("version", sa.String(128), primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("metrics", sa.JSON),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("training_runs.id")),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("promoted_at", TS),
    )
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("article_id", sa.String(256), sa.ForeignKey("articles.id"), nullable=False),
        sa.Column(
            "model_version",
            sa.String(128),
            sa.ForeignKey("model_versions.version"),
            nullable=False,
        ),
        sa.Column("label_id", sa.Integer, nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("probs", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("article_id", "model_version", name="uq_predictions_article_version"),
    )
    op.create_index("ix_predictions_created_at", "predictions", ["created_at"])
    op.create_table(
        "rejects",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(64)),
        sa.Column("position", sa.Integer),
        sa.Column("article_id", sa.String(256)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("message_id", "position", name="uq_rejects_message_pos"),
    )
    op.execute(LATEST_PREDICTIONS)


def downgrade() -> None:
    op.execute("DROP VIEW latest_predictions")
    for table in ("rejects", "predictions", "model_versions", "training_runs", "articles"):
        op.drop_table(table)
