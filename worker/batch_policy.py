"""When to close a window of waiting articles and how to cut it into forward batches.

Pure logic, no threads or clocks of its own, so it is unit-tested directly. The cost of a forward
pass grows with rows x padded length, so batches are bounded by a token budget on that product,
and articles are sorted by length first so that short ones are not padded to long ones.
"""

from __future__ import annotations

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

    def window_closed(self, pending_tokens: int, pending_rows: int, oldest_age_s: float) -> bool:
        """A window closes when it would fill a batch or its oldest article waited long enough."""
        return (
            pending_tokens >= self.token_budget
            or pending_rows >= self.max_rows
            or oldest_age_s >= self.max_wait_s
        )

    def wait_left(self, oldest_age_s: float) -> float:
        return max(0.0, self.max_wait_s - oldest_age_s)

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
