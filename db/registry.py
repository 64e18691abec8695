"""Training runs and model versions: create, update, register, promote, list."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, insert, select, update

from db.models import ModelVersion, TrainingRun, utcnow


def create_run(engine: Engine, params: dict[str, Any], task_id: str | None = None) -> int:
    with engine.begin() as conn:
        result = conn.execute(
            insert(TrainingRun)
            .values(params=params, task_id=task_id, status="queued", created_at=utcnow())
            .returning(TrainingRun.id)
        )
        return int(result.scalar_one())


def update_run(engine: Engine, run_id: int, **fields: Any) -> None:
    with engine.begin() as conn:
        conn.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(**fields))


def get_run(engine: Engine, run_id: int) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(TrainingRun.__table__).where(TrainingRun.id == run_id)).first()
    return dict(row._mapping) if row is not None else None


def register_version(
    engine: Engine, version: str, path: str, metrics: dict[str, Any], run_id: int | None
) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(ModelVersion).values(
                version=version, path=path, metrics=metrics, run_id=run_id, created_at=utcnow()
            )
        )


def promote(engine: Engine, version: str) -> None:
    """Make `version` the promoted model; running workers switch to it between batches."""
    with engine.begin() as conn:
        found = conn.execute(
            update(ModelVersion).where(ModelVersion.version == version).values(promoted_at=utcnow())
        ).rowcount
    if not found:
        raise LookupError(f"no model version {version!r}")


def versions(engine: Engine) -> list[dict[str, Any]]:
    query = select(ModelVersion.__table__).order_by(ModelVersion.created_at.desc())
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]
