"""When to close a window of waiting articles and how to cut it into forward batches.

Pure logic, no threads or clocks of its own, so it is unit-tested directly. The cost of a forward
pass grows with rows x padded length, so batches are bounded by a token budget on that product,
and articles are sorted by length first so that short ones are not padded to long ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def padded_width(length: int, multiple: int) -> int:
    """`length` rounded up to a whole `multiple`: the width the forward pass pads a batch to,
    so that the plan prices a batch at what collate builds."""
    return -(-length // multiple) * multiple


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    token_budget: int
    max_wait_s: float
    max_rows: int
    max_length: int
    # The forward pass pads a batch to a multiple of this (8 on CUDA, for the tensor cores):
    # the budget counts the padded width, so a batch of 17-token titles is priced at 24.
    pad_multiple: int = 1
    # Once a window closes, take everything already waiting up to this many budgets, so that
    # sorting by length has material under load without adding latency at light load.
    window_budgets: int = 4

    def estimate_tokens(self, title: str, content: str | None) -> int:
        """Upper estimate before tokenizing: about one token per CJK character, plus specials."""
        return min(len(title) + len(content or "") + 3, self.max_length)

    def window_closed(
        self,
        pending_tokens: int,
        pending_rows: int,
        oldest_age_s: float,
        arrivals_per_s: float | None = None,
        in_hand_left: int | None = None,
    ) -> bool:
        """A window closes when it would fill a batch, when its wait for company is over, or
        when no company can come: `in_hand_left`, the messages in hand whose articles are not
        in the pipeline yet (None: unknown), is 0, for the worker takes no more messages until
        some of those are committed. With one-article messages a window of 64 threads' messages
        otherwise waited the whole max wait for a 65th, and that wait, not the CPU, bounded
        the worker (~2,100/s alone)."""
        return (
            pending_tokens >= self.token_budget
            or pending_rows >= self.max_rows
            or in_hand_left == 0
            or self.wait_left(oldest_age_s, arrivals_per_s) <= 0
        )

    def wait_left(self, oldest_age_s: float, arrivals_per_s: float | None = None) -> float:
        """How much longer a window may wait for company: until its oldest article is
        `max_wait_s` old, unless less than one more article is expected in a whole wait at
        `arrivals_per_s` (None: unknown): at 20 one-article messages a second and a 20 ms wait,
        0.4 would come on average, so the lone article goes at once instead of waiting 20 ms
        for almost no batching. At higher rates the whole wait is kept: at 60/s, cutting it to
        the point where one more article was still expected made batches of one row, and the
        p99 grew from 89 to 159 ms (small model, 2 CPU cores)."""
        if arrivals_per_s is not None and arrivals_per_s * self.max_wait_s < 1:
            return 0.0
        return max(0.0, self.max_wait_s - oldest_age_s)

    def warm_shapes(self) -> list[tuple[int, int]]:
        """(rows, padded width) of the batches a worker meets most, at each width a batch can
        have: up to 4 rows (light load: one article, now and then two or three together) and a
        full budget (under load). A GPU worker runs these once before it consumes, so that the
        first articles do not wait for a shape's first pass (ModelRuntime.warm_up)."""
        step = self.pad_multiple
        widths = range(step, padded_width(self.max_length, step) + 1, step)
        shapes = []
        for width in widths:
            full = max(1, min(self.max_rows, self.token_budget // width))
            shapes += [(rows, width) for rows in sorted({1, 2, 4, full}) if rows <= full]
        return shapes

    @property
    def window_token_cap(self) -> int:
        return self.token_budget * self.window_budgets

    def plan(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices of `lengths` grouped into batches, longest first.

        Each batch satisfies rows x max(length) <= token_budget and rows <= max_rows; an article
        longer than the whole budget still gets a batch of its own.
        """
        order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
        batches: list[list[int]] = []
        current: list[int] = []
        padded = 0
        for index in order:
            if current and (
                (len(current) + 1) * padded > self.token_budget or len(current) >= self.max_rows
            ):
                batches.append(current)
                current = []
            if not current:
                padded = padded_width(lengths[index], self.pad_multiple)
            current.append(index)
        if current:
            batches.append(current)
        return batches


@dataclass(slots=True)
class ArrivalRate:
    """Articles per second handed to the batcher, from a count in which each article weighs
    0.5 ** (its age / `half_life_s`): a burst after a quiet spell, or a quiet spell after a
    burst, shows within a tenth of a second, and a fresh worker starts at 0 (a first lone article
    goes at once). Timestamps come from the caller, so it is tested without a clock."""

    half_life_s: float = 0.1
    _count: float = 0.0
    _at: float = 0.0  # when _count was brought up to date

    def observe(self, at: float, articles: int) -> None:
        self._count = self._decayed(at) + articles
        self._at = max(at, self._at)

    def per_second(self, now: float) -> float:
        """At a steady rate r the weighted count settles at r * half_life / ln 2."""
        return self._decayed(now) * math.log(2) / self.half_life_s

    def _decayed(self, now: float) -> float:
        return self._count * math.pow(0.5, max(now - self._at, 0.0) / self.half_life_s)
