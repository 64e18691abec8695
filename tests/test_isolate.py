"""Isolating the items that make a batch fail (pure)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from worker.isolate import isolate


def doubled_unless_poisoned(
    poison: set[int], calls: list[list[int]]
) -> Callable[[list[int]], list[int]]:
    def attempt(items: list[int]) -> list[int]:
        calls.append(items)
        if poison & set(items):
            raise ValueError(f"poison in {items}")
        return [2 * i for i in items]

    return attempt


@pytest.mark.parametrize("poison", [set(), {0}, {63}, {5, 6}, {1, 40, 41, 62}])
def test_every_clean_item_is_done_once_in_order_and_only_poison_fails(poison: set[int]) -> None:
    calls: list[list[int]] = []
    found = isolate(list(range(64)), doubled_unless_poisoned(poison, calls))
    done = [i for part, _ in found.done for i in part]
    assert done == [i for i in range(64) if i not in poison]
    assert [r for _, result in found.done for r in result] == [2 * i for i in done]
    assert sorted(item for item, _ in found.failed) == sorted(poison)
    assert all(isinstance(exc, ValueError) for _, exc in found.failed)


def test_one_poison_among_many_costs_a_logarithmic_number_of_attempts() -> None:
    calls: list[list[int]] = []
    isolate(list(range(1024)), doubled_unless_poisoned({700}, calls))
    assert len(calls) <= 2 * 10 + 1


def test_a_single_failing_item_and_an_empty_input() -> None:
    found = isolate([7], doubled_unless_poisoned({7}, []))
    assert found.done == [] and [item for item, _ in found.failed] == [7]
    empty = isolate([], doubled_unless_poisoned(set(), []))
    assert empty.failed == [] and [part for part, _ in empty.done] == [[]]
