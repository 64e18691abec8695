"""The one command line: `newsq worker | enqueue | ingest | reclassify | status | train | ...`.

Options override the matching NEWSQ_* setting for this command and the processes it starts.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from newsq.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.exc import DBAPIError

app = typer.Typer(
    help="Classify news articles with BERT behind a Redis queue.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
model_app = typer.Typer(help="Model folders.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")


def settings_with(**overrides: object) -> Settings:
    """Apply CLI overrides through the environment, so worker subprocesses inherit them too."""
    for key, value in overrides.items():
        if value is not None:
            os.environ[f"NEWSQ_{key.upper()}"] = str(value)
    get_settings.cache_clear()
    return get_settings()


@app.command()
def worker(
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues to consume.")
    ] = "newsq.classify",
    concurrency: Annotated[
        int | None, typer.Option(help="Task threads (NEWSQ_CONCURRENCY).")
    ] = None,
    hostname: Annotated[str, typer.Option(help="Celery node name.")] = "newsq@%h",
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    loglevel: Annotated[str | None, typer.Option(help="Log level (NEWSQ_LOG_LEVEL).")] = None,
    gpus: Annotated[
        str | None,
        typer.Option(help="all, cpu, or GPU indices (0,1): one supervised worker process per GPU."),
    ] = None,
    processes_per_gpu: Annotated[
        int,
        typer.Option(
            help="With --gpus: worker processes sharing each GPU, or the CPU (their Python"
            " work overlaps)."
        ),
    ] = 1,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Prometheus port (NEWSQ_METRICS_PORT; 0 = off; +N for the Nth GPU)."),
    ] = None,
) -> None:
    """Run a worker: a Celery thread pool feeding one in-process batcher and model."""
    settings = settings_with(
        device=device, concurrency=concurrency, log_level=loglevel, metrics_port=metrics_port
    )
    if gpus is not None:
        raise typer.Exit(supervise(settings, gpus, queues, concurrency, processes_per_gpu))
    from producer.contract import CLASSIFY_QUEUE
    from worker import services
    from worker.app import app as celery_app

    if CLASSIFY_QUEUE in queues.split(","):
        from worker.model import ModelLoadError

        try:  # load the model first: a broken one fails here, in one line
            runtime = services.batcher().runtime
        except ModelLoadError as exc:
            typer.echo(f"newsq: {exc}", err=True)
            raise typer.Exit(os.EX_CONFIG) from None  # a supervisor does not restart it
        device_type = runtime.device.type
        if settings.metrics_port:
            serve_metrics(settings, device_type == "cuda")
    else:
        from worker.model import resolve_device

        device_type = resolve_device(settings.device).type
    threads = services.tuning_for(settings, device_type).task_threads
    celery_app.worker_main(
        [
            "worker",
            f"--concurrency={threads}",
            f"--queues={queues}",
            f"--hostname={hostname}",
            f"--loglevel={settings.log_level}",
            "--without-mingle",
        ]
    )


def supervise(
    settings: Settings, gpus: str, queues: str, concurrency: int | None, per_gpu: int
) -> int:
    import logging

    import torch

    from worker.gpus import DeviceSelectionError, mps_control, mps_warning, select_slots
    from worker.launcher import Supervisor

    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(message)s")
    try:
        slots = select_slots(gpus, torch.cuda.device_count(), per_gpu)
    except DeviceSelectionError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    control = mps_control(os.environ)
    if warning := mps_warning(slots, control, control.exists()):
        logging.getLogger("newsq.supervisor").warning(warning)
    return Supervisor(
        slots,
        settings.broker_url,
        queues=queues,
        concurrency=concurrency,
        metrics_port=settings.metrics_port,
    ).run()


def serve_metrics(settings: Settings, cuda: bool) -> None:
    """/metrics for this worker; a busy port costs the metrics, never the worker."""
    import logging

    from producer.client import NewsClient
    from worker import metrics

    client = NewsClient(settings.broker_url)
    gpu_memory = None
    if cuda:
        import torch

        gpu_memory = torch.cuda.memory_allocated
    try:
        metrics.serve(settings.metrics_port, client.queue_length, gpu_memory)
    except OSError as exc:
        logging.getLogger("newsq").warning(
            "metrics port %s unavailable (%s): no /metrics", settings.metrics_port, exc
        )


@app.command()
def enqueue(
    titles: Annotated[list[str] | None, typer.Argument(help="Titles to classify.")] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            help="One title per line; a TAB and what follows is ignored (the THUCNews format)."
        ),
    ] = None,
    priority: Annotated[int | None, typer.Option(help="0 (first) .. 9 (last).")] = None,
    chunk_size: Annotated[int, typer.Option(help="Articles per message (1..1024).")] = 256,
) -> None:
    """Enqueue titles for classification and print their ids."""
    from producer.client import NewsClient

    items: list[str] = list(titles or [])
    if file is not None:
        with file.open(encoding="utf-8-sig") as handle:
            items += [line.split("\t", 1)[0].strip() for line in handle if line.strip()]
    if not items:
        raise typer.BadParameter("give titles as arguments or --file")
    with NewsClient(get_settings().broker_url) as client:
        try:
            ids = client.enqueue(
                [{"title": t} for t in items], priority=priority, chunk_size=chunk_size
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    for article_id in ids:
        typer.echo(article_id)


@app.command()
def ingest(
    file: Annotated[str, typer.Argument(help="CSV or JSON Lines file, or - for standard input.")],
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="csv or jsonl (default: from the file name; csv for stdin)."),
    ] = None,
    encoding: Annotated[
        str,
        typer.Option(
            help="auto (UTF-8 with or without BOM, else GB18030), or any Python codec name."
        ),
    ] = "auto",
    id_column: Annotated[str, typer.Option(help="Column with the article id (optional).")] = "id",
    title_column: Annotated[str, typer.Option(help="Column with the title (required).")] = "title",
    content_column: Annotated[str, typer.Option(help="Column with the body text.")] = "content",
    source_column: Annotated[str, typer.Option(help="Column with the source.")] = "source",
    chunk_size: Annotated[int, typer.Option(help="Articles per message (1..1024).")] = 512,
    max_queue: Annotated[
        int, typer.Option(help="Wait while more messages than this are queued (backpressure).")
    ] = 2000,
    rejects: Annotated[
        Path | None, typer.Option(help="CSV of bad rows (default: FILE.rejects.csv).")
    ] = None,
    restart: Annotated[
        bool, typer.Option(help="Forget the checkpoint and send the whole file again.")
    ] = False,
    priority: Annotated[int | None, typer.Option(help="0 (first) .. 9 (last).")] = None,
    wait: Annotated[
        bool,
        typer.Option(help="Then follow until every article is classified and print the labels."),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 3600,
) -> None:
    """Stream a CSV / JSON Lines file into the queue: resumable, with backpressure."""
    from newsq.ingest_cli import run_ingest
    from producer.ingest import IngestOptions
    from producer.sources import Columns, detect_format

    if fmt not in (None, "csv", "jsonl"):
        raise typer.BadParameter("csv or jsonl", param_hint="--format")
    options = IngestOptions(
        path=file,
        fmt=fmt or ("csv" if file == "-" else detect_format(file)),  # type: ignore[arg-type]
        encoding=encoding,
        columns=Columns(id_column, title_column, content_column, source_column),
        chunk_size=chunk_size,
        max_queue=max_queue,
        rejects_path=rejects or Path(("stdin" if file == "-" else file) + ".rejects.csv"),
        restart=restart,
        priority=priority,
        keep_ids=wait,
    )
    raise typer.Exit(run_ingest(get_settings(), options, wait=wait, timeout=timeout))


@app.command()
def reclassify(
    since: Annotated[
        datetime | None,
        typer.Option(
            help="Only articles received at or after this time (ISO 8601; UTC without a zone).",
            formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"],
        ),
    ] = None,
    source: Annotated[str | None, typer.Option(help="Only articles of this source.")] = None,
    chunk_size: Annotated[int, typer.Option(help="Articles per message (1..1024).")] = 512,
    priority: Annotated[
        int, typer.Option(help="0 (first) .. 9 (last): behind live traffic (0) by default.")
    ] = 9,
    max_queue: Annotated[
        int, typer.Option(help="Wait while more messages than this are queued (backpressure).")
    ] = 2000,
    wait: Annotated[
        float,
        typer.Option(help="Seconds to wait until every running classify worker serves the model."),
    ] = 300,
    dry_run: Annotated[bool, typer.Option(help="Only count the articles.")] = False,
) -> None:
    """Send stored articles the promoted model has not classified through the queue again."""
    from newsq.reclassify_cli import run_reclassify

    code = run_reclassify(
        get_settings(),
        since=since,
        source=source,
        chunk_size=chunk_size,
        priority=priority,
        max_queue=max_queue,
        wait=wait,
        dry_run=dry_run,
    )
    raise typer.Exit(code)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Queues, live workers (device, model version), promoted model, throughput, rejects."""
    import json

    from db.engine import make_engine
    from producer.client import NewsClient
    from producer.status import collect

    settings = get_settings()
    engine = make_engine(settings.database_url)
    with NewsClient(settings.broker_url) as client:
        report = collect(client, engine, settings.database_url)
    engine.dispose()
    if as_json:
        typer.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"broker {report['broker']}   database {report['database']}")
    queues = Table("queue", "messages", title="queues")
    for name, length in report["queues"].items():
        queues.add_row(name, f"{length:,}")
    workers = Table("worker", "device", "model version", "metrics port", "pid", title="workers")
    for w in report["workers"]:
        workers.add_row(
            *(str(w.get(k)) for k in ("name", "device", "model_version", "metrics_port", "pid"))
        )
    console.print(queues, workers)
    promoted = report["promoted_model"]
    console.print(f"promoted model: {promoted['version'] if promoted else 'none'}")
    last_minute = report["classified_last_minute"]
    console.print(f"classified in the last minute: {last_minute:,} ({last_minute / 60:.1f}/s)")
    console.print(
        f"rejects: {report['rejects_total']:,} ({report['rejects_last_hour']:,} in the last hour)"
    )


@app.command()
def train(
    train_file: Annotated[str, typer.Option(help="title<TAB>label file or CSV.")] = (
        "../shared/data/thucnews/train.txt"
    ),
    dev_file: Annotated[str, typer.Option(help="Evaluated every --eval-steps.")] = (
        "../shared/data/thucnews/dev.txt"
    ),
    test_file: Annotated[str | None, typer.Option(help="Final report.")] = (
        "../shared/data/thucnews/test.txt"
    ),
    class_file: Annotated[str | None, typer.Option(help="Label names, one per line.")] = None,
    base_model: Annotated[str, typer.Option(help="small, base, or a Hugging Face name/path.")] = (
        "small"
    ),
    epochs: Annotated[float, typer.Option()] = 3.0,
    learning_rate: Annotated[float, typer.Option()] = 5e-4,
    batch_size: Annotated[int, typer.Option()] = 64,
    warmup_ratio: Annotated[float, typer.Option()] = 0.06,
    weight_decay: Annotated[float, typer.Option()] = 0.01,
    eval_steps: Annotated[int, typer.Option()] = 200,
    patience: Annotated[int, typer.Option(help="Evaluations without a better dev loss.")] = 3,
    max_length: Annotated[int, typer.Option()] = 32,
    max_train_samples: Annotated[int | None, typer.Option()] = None,
    mlm_epochs: Annotated[
        float,
        typer.Option(help="Masked-LM pretraining epochs on the training titles first (0: none)."),
    ] = 0.0,
    mlm_learning_rate: Annotated[float, typer.Option()] = 5e-4,
    trim_vocab: Annotated[
        bool, typer.Option(help="Named shapes: keep only the tokens the training titles use.")
    ] = True,
    label_smoothing: Annotated[float, typer.Option()] = 0.0,
    seed: Annotated[int, typer.Option()] = 42,
    output_dir: Annotated[str, typer.Option(help="Runs are written to OUTPUT_DIR/run-ID.")] = (
        "runs"
    ),
    promote: Annotated[bool, typer.Option(help="Promote the new version when done.")] = False,
    promote_if_better: Annotated[
        bool, typer.Option(help="Promote only if test accuracy beats the promoted version.")
    ] = False,
    follow: Annotated[bool, typer.Option(help="Show progress until the run ends.")] = False,
) -> None:
    """Queue a fine-tuning run on newsq.train (a trainer worker runs it); prints the run id."""
    from producer.client import NewsClient

    settings = get_settings()
    with NewsClient(settings.broker_url, database_url=settings.database_url) as client:
        run_id = client.train(
            train_file=str(Path(train_file).resolve()),
            dev_file=str(Path(dev_file).resolve()),
            test_file=str(Path(test_file).resolve()) if test_file else None,
            class_file=str(Path(class_file).resolve()) if class_file else None,
            base_model=base_model,
            tokenizer=str(Path(settings.tokenizer_dir).resolve()),
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            warmup_ratio=warmup_ratio,
            weight_decay=weight_decay,
            eval_steps=eval_steps,
            early_stopping_patience=patience,
            max_length=max_length,
            max_train_samples=max_train_samples,
            mlm_epochs=mlm_epochs,
            mlm_learning_rate=mlm_learning_rate,
            trim_vocab=trim_vocab,
            label_smoothing=label_smoothing,
            seed=seed,
            output_dir=str(Path(output_dir).resolve()),
            promote=promote,
            promote_if_better=promote_if_better,
        )
    typer.echo(f"run {run_id} queued")
    if follow:
        from newsq.train_cli import follow_run

        raise typer.Exit(follow_run(settings, run_id))


@app.command()
def report(run_id: Annotated[int, typer.Argument(help="Training run id.")]) -> None:
    """Print a run's test report: accuracy, macro P/R/F1, per class, confusion matrix."""
    from newsq.train_cli import print_report

    raise typer.Exit(print_report(get_settings(), run_id))


@model_app.command("list")
def model_list() -> None:
    """Registered model versions, with test accuracy; the promoted one is marked."""
    from newsq.train_cli import print_versions

    print_versions(get_settings())


@model_app.command("promote")
def model_promote(
    version: Annotated[str, typer.Argument()],
    wait: Annotated[
        float,
        typer.Option(
            help="Seconds to wait until every running classify worker serves VERSION "
            "(each loads it in the background within NEWSQ_RELOAD_INTERVAL_S); 0: do not wait."
        ),
    ] = 0,
) -> None:
    """Promote VERSION: running classify workers load it and switch to it between batches."""
    from db import registry
    from db.engine import make_engine

    settings = get_settings()
    engine = make_engine(settings.database_url)
    try:
        registry.promote(engine, version)
    except LookupError as exc:
        raise typer.BadParameter(str(exc), param_hint="VERSION") from exc
    finally:
        engine.dispose()
    typer.echo(f"promoted {version}")
    if wait > 0:
        from producer.client import NewsClient

        with NewsClient(settings.broker_url) as client:
            try:
                client.wait_for_model(version, timeout=wait)
            except TimeoutError as exc:
                typer.echo(str(exc), err=True)
                raise typer.Exit(1) from exc
        typer.echo(f"every running classify worker serves {version}")


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Create or migrate the schema at NEWSQ_DATABASE_URL."""
    from db.migrate import upgrade

    upgrade(get_settings().database_url, revision)
    typer.echo(f"database at revision {revision}")


@model_app.command("init")
def model_init(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write (save_pretrained layout).")],
    config: Annotated[str, typer.Option(help="Model shape: small or base.")] = "small",
    tokenizer: Annotated[
        Path | None,
        typer.Option(help="bert-base-chinese tokenizer/config folder (NEWSQ_TOKENIZER_DIR)."),
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write a randomly initialised classifier with the real tokenizer and the 10 labels."""
    from worker.model_shapes import init_model

    tokenizer_dir = tokenizer or Path(get_settings().tokenizer_dir)
    if not (tokenizer_dir / "vocab.txt").exists():
        raise typer.BadParameter(f"no vocab.txt in {tokenizer_dir}", param_hint="--tokenizer")
    version = init_model(config, out_dir, tokenizer_dir, seed=seed)
    typer.echo(f"wrote {config} model version {version} to {out_dir}")


@app.command()
def demo(
    data: Annotated[Path, typer.Option(help="title<TAB>label file to classify.")] = Path(
        "../shared/data/thucnews/test.txt"
    ),
    count: Annotated[int, typer.Option(help="How many titles.")] = 1000,
    tokenizer: Annotated[
        Path | None, typer.Option(help="Tokenizer folder for a new model.")
    ] = None,
    train_samples: Annotated[
        int,
        typer.Option(
            help="When no model is promoted, first train on this many titles of train.txt beside "
            "--data (0: classify with the untrained model)."
        ),
    ] = 20000,
) -> None:
    """Start a worker, train a small model if none is promoted, classify titles end to end,
    print a summary and how to query it."""
    from newsq.demo import run_demo

    if not data.exists():
        raise typer.BadParameter(f"{data} does not exist", param_hint="--data")
    run_demo(settings_with(tokenizer_dir=tokenizer), data, count, train_samples)


def main() -> None:
    try:
        app()
    except Exception as exc:
        if (message := settings_error(exc)) is not None:
            status = os.EX_CONFIG  # 78: fix the configuration; starting again will not help
        elif (message := service_error(exc)) is not None:
            status = 1  # a service may come back
        else:
            raise  # a bug: its traceback
        typer.echo(f"newsq: {message}", err=True)
        raise SystemExit(status) from None


def settings_error(exc: Exception) -> str | None:
    """One line naming each NEWSQ_* setting (from the environment, .env or an option) that
    is not valid, and why; a URL's password masked. None for any other error."""
    from pydantic import ValidationError

    from producer.client import redact

    if not isinstance(exc, ValidationError) or exc.title != Settings.__name__:
        return None

    def given(value: object) -> str:
        return repr(redact(value) if isinstance(value, str) else value)

    return "; ".join(
        f"NEWSQ_{'_'.join(map(str, e['loc'])).upper()}={given(e['input'])}: {e['msg']}"
        for e in exc.errors()
    )


def service_error(exc: Exception) -> str | None:
    """One line for the broker or the database that cannot be reached or used, with its
    configured URL (password masked); None for anything else. An operator needs to know which
    service and why, not the stack of the client library that found out."""
    from kombu.exceptions import OperationalError as BrokerError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import DBAPIError, OperationalError

    from producer.client import redact

    settings = get_settings()
    if isinstance(exc, BrokerError | RedisConnectionError | RedisTimeoutError):
        service, url, reason = "broker", settings.broker_url, str(exc)
    elif isinstance(exc, DBAPIError) and (isinstance(exc, OperationalError) or missing_table(exc)):
        service, url, reason = "database", settings.database_url, str(exc.orig)
        if missing_table(exc):
            reason += " (has `newsq db upgrade` run on this database?)"
    else:
        return None
    reason = " ".join(reason.split())  # psycopg's reasons run over several lines
    return f"the {service} at {redact(url)} failed: {reason}"


def missing_table(exc: DBAPIError) -> bool:
    """A table of the schema is missing: SQLite's "no such table", PostgreSQL's undefined_table
    (a ProgrammingError, otherwise a bug in a statement, which keeps its traceback)."""
    return getattr(exc.orig, "sqlstate", None) == "42P01" or "no such table" in str(exc.orig)
