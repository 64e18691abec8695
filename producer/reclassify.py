"""Send stored articles through the queue again, for the promoted model.

After a promotion only what arrives next gets the new model's labels; `newsq reclassify` sends
back what came before, so that `latest_predictions` (which prefers the promoted model's
prediction) shows one model for every article. It reads `articles` in pages by id and leaves
out what that model has already classified: a run that stopped is resumed by running it again,
and once the workers have caught up another run sends nothing (one sooner sends again what is
still queued: its rows are upserted, not doubled). The workers write the new predictions beside
the old ones (one row per article and model version), so the old model's labels stay queryable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from db import queries
from producer.client import NewsClient

PAGE = 4096  # articles a query reads and the client sends in one go


@dataclass(frozen=True)
class Selection:
    """Which stored articles: those `version` has not classified, received at or after
    `since`, from `source` (each when given)."""

    version: str
    since: datetime | None = None
    source: str | None = None


def promoted(engine: Engine) -> str:
    """The promoted version: the one every classify worker serves, or loads when it starts."""
    row = queries.promoted_version(engine)
    if row is None:
        raise LookupError("no model version is promoted: promote one with `newsq model promote`")
    return str(row["version"])


def pending(engine: Engine, selection: Selection) -> int:
    return queries.count_unclassified(
        engine, selection.version, since=selection.since, source=selection.source
    )


def wait_until_served(client: NewsClient, version: str, timeout: float) -> bool:
    """Block until every running classify worker serves `version`, so that none classifies
    what is sent with the model before it. False when no classify worker runs: the articles
    then wait in the queue, and a worker that starts loads the promoted version first."""
    serving = {w["model_version"] for w in client.workers() if w.get("model_version")}
    if not serving:
        return False
    if serving != {version}:
        client.wait_for_model(version, timeout=timeout)
    return True


def pages(engine: Engine, selection: Selection) -> Iterator[list[dict[str, Any]]]:
    """The selected articles, PAGE at a time in id order: each query starts past the last id
    of the page before, so the pages cost the same from the first to the last."""
    after = ""
    while page := queries.unclassified_page(
        engine,
        selection.version,
        after=after,
        limit=PAGE,
        since=selection.since,
        source=selection.source,
    ):
        yield page
        after = page[-1]["id"]


def send(
    client: NewsClient,
    engine: Engine,
    selection: Selection,
    *,
    chunk_size: int,
    priority: int | None = None,
    on_sent: Callable[[int], None] = lambda count: None,
) -> int:
    """Enqueue every selected article, a page at a time (the client's `max_queue` paces it);
    returns how many were sent. `priority` 9 puts them behind live traffic (0 by default)."""
    sent = 0
    for page in pages(engine, selection):
        client.enqueue(page, chunk_size=chunk_size, priority=priority)
        sent += len(page)
        on_sent(len(page))
    return sent
