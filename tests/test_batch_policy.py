"""The batching policy, without threads, Redis or a model."""

from __future__ import annotations

import random

import pytest

from worker.batch_policy import ArrivalRate, BatchPolicy


def policy(**overrides: float) -> BatchPolicy:
    values: dict[str, float] = {
        "token_budget": 256,
        "max_wait_s": 0.02,
        "max_rows": 64,
        "max_length": 64,
    }
    values.update(overrides)
    return BatchPolicy(
        token_budget=int(values["token_budget"]),
        max_wait_s=values["max_wait_s"],
        max_rows=int(values["max_rows"]),
        max_length=int(values["max_length"]),
        pad_multiple=int(values.get("pad_multiple", 1)),
    )


def test_every_index_lands_in_exactly_one_batch() -> None:
    lengths = [random.Random(seed).randint(3, 64) for seed in range(500)]
    batches = policy().plan(lengths)
    assert sorted(i for batch in batches for i in batch) == list(range(500))


def test_batches_respect_the_token_budget_on_padded_size() -> None:
    lengths = [random.Random(seed).randint(3, 64) for seed in range(500)]
    for batch in policy(token_budget=256).plan(lengths):
        assert len(batch) * max(lengths[i] for i in batch) <= 256


def test_batches_are_sorted_by_length_so_padding_stays_small() -> None:
    lengths = [10, 60, 11, 59, 12, 58, 13, 57]
    batches = policy(token_budget=240).plan(lengths)
    # Long with long, short with short: 4 x 60 = 240 then 4 x 13 = 52.
    assert [sorted(lengths[i] for i in b) for b in batches] == [[57, 58, 59, 60], [10, 11, 12, 13]]
    unsorted_padding = 8 * max(lengths)
    sorted_padding = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert sorted_padding < unsorted_padding


def test_the_budget_prices_a_batch_at_its_padded_width() -> None:
    lengths = [17] * 40
    assert [len(b) for b in policy(token_budget=240).plan(lengths)] == [14, 14, 12]
    # padded to 24 on CUDA: 240 // 24 = 10 rows a batch
    padded = policy(token_budget=240, pad_multiple=8).plan(lengths)
    assert [len(b) for b in padded] == [10, 10, 10, 10]


def test_max_rows_caps_a_batch_of_short_articles() -> None:
    batches = policy(token_budget=10_000, max_rows=16).plan([5] * 40)
    assert [len(b) for b in batches] == [16, 16, 8]


def test_an_article_longer_than_the_budget_gets_a_batch_of_its_own() -> None:
    batches = policy(token_budget=32).plan([64, 8, 8])
    assert batches[0] == [0]
    assert sorted(batches[1]) == [1, 2]


def test_empty_window_plans_no_batch() -> None:
    assert policy().plan([]) == []


@pytest.mark.parametrize(
    ("tokens", "rows", "age", "closed"),
    [
        (10, 1, 0.0, False),  # young and small: wait for company
        (256, 4, 0.0, True),  # the budget is full
        (10, 64, 0.0, True),  # the row cap is full
        (10, 1, 0.02, True),  # the oldest waited max_wait
    ],
)
def test_window_closes_on_budget_rows_or_max_wait(
    tokens: int, rows: int, age: float, closed: bool
) -> None:
    assert policy().window_closed(tokens, rows, age) is closed


def test_window_closes_at_once_when_every_sender_is_in_it() -> None:
    p = policy(max_wait_s=0.05)
    assert not p.window_closed(10, 1, 0.0, 100.0, in_hand_left=3)  # company can still come
    assert p.window_closed(10, 1, 0.0, 100.0, in_hand_left=0)  # all in hand are in it
    assert not p.window_closed(10, 1, 0.0, 100.0, in_hand_left=None)  # unknown: the wait


def test_wait_left_counts_down_from_max_wait() -> None:
    p = policy(max_wait_s=0.05)
    assert p.wait_left(0.0) == pytest.approx(0.05)
    assert p.wait_left(0.03) == pytest.approx(0.02)
    assert p.wait_left(1.0) == 0.0


def test_a_window_waits_only_when_company_is_expected_within_the_wait() -> None:
    p = policy(max_wait_s=0.02)
    # 20 articles/s: 0.4 expected in 20 ms, so a lone article goes at once
    assert p.wait_left(0.0, 20.0) == 0.0 and p.window_closed(10, 1, 0.0, 20.0)
    assert p.wait_left(0.0, 0.0) == 0.0  # nothing has come lately
    # 60/s: 1.2 expected, so the whole wait, as without a rate
    assert p.wait_left(0.004, 60.0) == pytest.approx(0.016) == p.wait_left(0.004)
    assert not p.window_closed(10, 1, 0.004, 60.0) and p.window_closed(10, 1, 0.02, 60.0)


def test_arrival_rate_settles_on_a_steady_rate_and_follows_a_change() -> None:
    rate = ArrivalRate(half_life_s=1.0)
    assert rate.per_second(0.0) == 0.0  # a fresh worker expects nobody
    for i in range(200):  # 20 one-article messages a second for 10 s
        rate.observe(i / 20, 1)
    assert rate.per_second(199 / 20) == pytest.approx(20, rel=0.05)
    for i in range(50):  # then 256-article messages, 50 a second, for 1 s
        rate.observe(10 + i / 50, 256)
    assert rate.per_second(10 + 49 / 50) > 5000
    assert rate.per_second(20.0) < 20  # ten quiet seconds later
    rate.observe(5.0, 3)  # a late timestamp (threads hand over out of order) still counts
    assert rate.per_second(20.0) > 0


def test_warm_shapes_are_light_load_rows_and_a_full_budget_at_each_padded_width() -> None:
    policy = BatchPolicy(
        token_budget=32768, max_wait_s=0.02, max_rows=2048, max_length=60, pad_multiple=8
    )
    shapes = policy.warm_shapes()
    assert sorted({width for _, width in shapes}) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert [rows for rows, width in shapes if width == 8] == [1, 2, 4, 2048]  # max_rows
    assert [rows for rows, width in shapes if width == 24] == [1, 2, 4, 1365]
    assert [rows for rows, width in shapes if width == 64] == [1, 2, 4, 512]
    tiny = BatchPolicy(token_budget=10, max_wait_s=0.02, max_rows=4, max_length=16)
    assert tiny.warm_shapes()[:4] == [(1, 1), (2, 1), (4, 1), (1, 2)]  # pad 1: every width
    assert tiny.warm_shapes()[-2:] == [(1, 15), (1, 16)]  # a full budget of these is one row


def test_token_estimate_is_capped_at_max_length() -> None:
    p = policy(max_length=32)
    assert p.estimate_tokens("央行降准", None) == 4 + 3
    assert p.estimate_tokens("标题" * 100, "正文") == 32
