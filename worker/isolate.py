"""Find the articles that make a batch fail, by splitting it in halves until they stand alone.

Pure logic: the batcher calls it with "tokenize these" or "run the model on these", tests call it
with any function. One poison article among n costs about 2 log2(n) extra attempts, and every
other article of the batch still gets its result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Isolated(Generic[T, R]):
    """`done`: the parts that succeeded, with their results, in input order;
    `failed`: each item that failed on its own, with its error."""

    done: list[tuple[list[T], R]] = field(default_factory=list)
    failed: list[tuple[T, Exception]] = field(default_factory=list)


def isolate(items: Sequence[T], attempt: Callable[[list[T]], R]) -> Isolated[T, R]:
    result: Isolated[T, R] = Isolated()
    pending = [list(items)]
    while pending:
        part = pending.pop()
        try:
            result.done.append((part, attempt(part)))
        except Exception as exc:
            if len(part) == 1:
                result.failed.append((part[0], exc))
            else:
                middle = len(part) // 2
                pending += [part[middle:], part[:middle]]  # the first half is tried first
    return result
