"""The `newsq.train` task: run the trainer, record the run, register (and maybe promote) the
new model version.

Acked on receipt, unlike classify: a training run outlives any sane visibility timeout, and a
redelivered message would start a second run; a run whose worker died stays `running` with its
last progress, and is retried by triggering it again.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery import Task

from db import queries, registry
from db.models import utcnow
from producer.contract import TRAIN_TASK, TrainRequest
from worker import services, tuning
from worker.app import app

log = logging.getLogger(__name__)


@app.task(name=TRAIN_TASK, bind=True, acks_late=False)
def train_model(self: Task, **kwargs: Any) -> dict[str, Any]:
    request = TrainRequest.model_validate(kwargs)
    engine = services.store().engine
    run_id = request.run_id or registry.create_run(engine, request.model_dump(), self.request.id)
    run_dir = Path(request.output_dir).resolve() / f"run-{run_id}"
    registry.update_run(
        engine,
        run_id,
        status="running",
        started_at=utcnow(),
        task_id=self.request.id,
        output_dir=str(run_dir),
    )
    # Celery's own "Received task" line is off by default (NEWSQ_LOG_TASKS): say it here, once.
    log.info("run %s: training %s on %s", run_id, request.base_model, request.train_file)

    def progress(state: dict[str, Any]) -> None:
        registry.update_run(engine, run_id, progress=state)
        self.send_event("task-progress", run_id=run_id, **state)  # Flower shows PROGRESS

    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    version = f"{Path(request.base_model).name}-run{run_id}-{stamp}"
    # Imported here, not at the top: the trainer brings the HF Trainer, scikit-learn and
    # matplotlib, about two seconds of every worker's start-up that serving never uses.
    from worker.trainer import train

    try:
        # Every core: a classify batcher in the same process (the demo's worker consumes both
        # queues) has set one torch thread per forward pass, which would halve training speed.
        with tuning.torch_threads(tuning.usable_cores()):
            result = train(request, run_dir, progress, version)
    except Exception as exc:
        registry.update_run(
            engine,
            run_id,
            status="failed",
            error=f"{type(exc).__name__}: {exc}",
            finished_at=utcnow(),
        )
        raise
    report = result.report
    metrics = {
        **{k: v for k, v in report.items() if k != "confusion_matrix"},
        "dev_accuracy": result.dev_accuracy,
        "best_eval_loss": result.best_eval_loss,
        "restored_eval_loss": result.restored_eval_loss,
        "eval_history": result.eval_history,
        "stopped_at_step": result.stopped_at_step,
        "max_steps": result.max_steps,
        "train_rows": result.train_rows,
        "bad_rows": result.bad_rows,
    }
    registry.register_version(engine, version, str(result.model_dir), metrics, run_id)
    promoted = request.promote or (
        request.promote_if_better and better_than_promoted(engine, report["accuracy"])
    )
    if promoted:
        registry.promote(engine, version)
    registry.update_run(
        engine,
        run_id,
        status="finished",
        finished_at=utcnow(),
        metrics=metrics,
        confusion_matrix=report["confusion_matrix"],
        best_step=result.best_step,
    )
    log.info(
        "run %s: version %s, test accuracy %.4f%s",
        run_id,
        version,
        report["accuracy"],
        ", promoted" if promoted else "",
    )
    return {
        "run_id": run_id,
        "version": version,
        "accuracy": report["accuracy"],
        "promoted": promoted,
    }


def better_than_promoted(engine: Any, accuracy: float) -> bool:
    current = queries.promoted_version(engine)
    if current is None:
        return True
    known = next((v for v in registry.versions(engine) if v["version"] == current["version"]), None)
    previous = (known or {}).get("metrics") or {}
    return accuracy > float(previous.get("accuracy", 0.0))
