"""`newsq reclassify`: which model, how many articles, a progress bar while they are sent."""

from __future__ import annotations

from datetime import UTC, datetime

from db.engine import make_engine
from newsq.ingest_cli import bar, console
from newsq.settings import Settings
from producer import reclassify
from producer.client import NewsClient


def as_utc(moment: datetime | None) -> datetime | None:
    """A time without a zone is read as UTC, the zone `received_at` is written in."""
    if moment is None:
        return None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def run_reclassify(
    settings: Settings,
    *,
    since: datetime | None,
    source: str | None,
    chunk_size: int,
    priority: int,
    max_queue: int,
    wait: float,
    dry_run: bool,
) -> int:
    engine = make_engine(settings.database_url)
    try:
        try:
            version = reclassify.promoted(engine)
        except LookupError as exc:
            console.print(f"newsq: {exc}")
            return 1
        selection = reclassify.Selection(version, as_utc(since), source)
        total = reclassify.pending(engine, selection)
        console.print(f"{total:,} stored articles have no prediction of the promoted {version}")
        if dry_run or total == 0:
            return 0
        with NewsClient(settings.broker_url, max_queue=max_queue) as client:
            try:
                if not reclassify.wait_until_served(client, version, wait):
                    console.print("no classify worker runs: the articles wait for one")
            except TimeoutError as exc:
                console.print(f"newsq: {exc}")
                return 1
            with bar() as progress:
                task = progress.add_task("reclassify", total=total, info="")
                sent = reclassify.send(
                    client,
                    engine,
                    selection,
                    chunk_size=chunk_size,
                    priority=priority,
                    on_sent=lambda count: progress.advance(task, count),
                )
        console.print(f"sent {sent:,} articles for {version}; `newsq status` follows the workers")
        return 0
    finally:
        engine.dispose()
