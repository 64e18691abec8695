"""`newsq train --follow`, `newsq report`, `newsq model list`: progress and reports on screen."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from db import queries, registry
from db.engine import make_engine
from newsq.settings import Settings

console = Console()


def follow_run(settings: Settings, run_id: int, poll: float = 2.0) -> int:
    """A progress bar fed by the run row; 0 when the run finished, 1 when it failed."""
    engine = make_engine(settings.database_url)
    try:
        with Progress(
            TextColumn("[bold]run {task.fields[run]}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("train", total=None, run=run_id, info="queued")
            while True:
                run = registry.get_run(engine, run_id)
                if run is None:
                    console.print(f"[red]no run {run_id}[/]")
                    return 1
                state = run["progress"] or {}
                bar.update(
                    task,
                    total=state.get("max_steps") or None,
                    completed=state.get("step", 0),
                    info=describe(run["status"], state),
                )
                if run["status"] in ("finished", "failed"):
                    break
                time.sleep(poll)
        if run["status"] == "failed":
            console.print(f"[red]run {run_id} failed:[/] {run['error']}")
            return 1
        return print_report(settings, run_id)
    finally:
        engine.dispose()


def describe(status: str, state: dict[str, Any]) -> str:
    parts = [status]
    for key in ("epoch", "step", "train_loss", "eval_loss", "eval_accuracy"):
        if key in state:
            parts.append(f"{key} {state[key]}")
    return "  ".join(parts)


def print_report(settings: Settings, run_id: int) -> int:
    engine = make_engine(settings.database_url)
    try:
        run = registry.get_run(engine, run_id)
    finally:
        engine.dispose()
    if run is None:
        console.print(f"[red]no run {run_id}[/]")
        return 1
    metrics = run["metrics"] or {}
    console.print(
        f"run {run_id}: {run['status']}  best step {run['best_step']}  folder {run['output_dir']}"
    )
    if not metrics:
        console.print(run["error"] or "no report yet")
        return 0 if run["status"] != "failed" else 1
    console.print(
        f"test accuracy {metrics['accuracy']:.4f}   macro precision "
        f"{metrics['macro_precision']:.4f}   recall {metrics['macro_recall']:.4f}   "
        f"F1 {metrics['macro_f1']:.4f}   (dev accuracy {metrics['dev_accuracy']:.4f})"
    )
    table = Table("label", "precision", "recall", "F1", "support", title="per class (test)")
    for row in metrics["per_class"]:
        table.add_row(
            row["label"],
            f"{row['precision']:.3f}",
            f"{row['recall']:.3f}",
            f"{row['f1']:.3f}",
            str(row["support"]),
        )
    console.print(table)
    labels = [row["label"] for row in metrics["per_class"]]
    matrix = Table(
        "actual \\ predicted", *[label[:5] for label in labels], title="confusion matrix"
    )
    for label, counts in zip(labels, run["confusion_matrix"] or [], strict=False):
        matrix.add_row(label, *map(str, counts))
    console.print(matrix)
    console.print(f"plots: {run['output_dir']}/confusion_matrix.png, loss_curves.png")
    return 0


def print_versions(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    try:
        versions = registry.versions(engine)
        promoted = queries.promoted_version(engine)
    finally:
        engine.dispose()
    table = Table("", "version", "test accuracy", "run", "created", "path", title="model versions")
    for v in versions:
        accuracy = (v["metrics"] or {}).get("accuracy")
        mark = "*" if promoted and promoted["version"] == v["version"] else ""
        table.add_row(
            mark,
            v["version"],
            f"{accuracy:.4f}" if accuracy is not None else "-",
            str(v["run_id"] or "-"),
            str(v["created_at"])[:19],
            v["path"],
        )
    console.print(table)
