"""The model runtime and `model init`: real tokenizer, labels from the config, shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from newsq.settings import Precision
from tests.helpers import freed_by_reference_count, warmed
from worker.model import Encoded, ModelRuntime, TensorBatch, resolve_precision
from worker.train_data import THUCNEWS_LABELS


def row(encoded: Encoded, i: int, *, types: bool = False) -> list[int]:
    """Row `i` of the flat encoding: its token ids, or its token type ids."""
    start, length = int(encoded.starts[i]), encoded.lengths[i]
    if types and encoded.type_ids is None:
        return [0] * length
    values = encoded.type_ids if types else encoded.ids
    assert values is not None
    return [int(v) for v in values[start : start + length]]


def test_chinese_title_does_not_encode_to_unk(small_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(small_model))
    title = "央行宣布下调存款准备金率"
    ids = tokenizer(title)["input_ids"]
    assert len(tokenizer.get_vocab()) == 21128
    assert tokenizer.unk_token_id not in ids
    assert len(ids) == len(title) + 2  # one token per character plus [CLS] and [SEP]

    runtime = ModelRuntime.load(str(small_model), device="cpu")
    encoded = runtime.encode([(title, None), (title, "正文内容")])
    assert row(encoded, 0) == ids
    assert 100 not in row(encoded, 1) and row(encoded, 1, types=True)[-1] == 1
    assert row(encoded, 0, types=True) == [0] * len(ids)


def test_init_writes_the_small_shape_with_the_ten_labels(small_model: Path) -> None:
    config = AutoConfig.from_pretrained(str(small_model))
    assert (config.num_hidden_layers, config.hidden_size) == (4, 256)
    assert [config.id2label[i] for i in range(10)] == list(THUCNEWS_LABELS)
    assert config.newsq_model_version.startswith("small-init-")


def test_runtime_predicts_probabilities_with_labels_from_the_config(small_model: Path) -> None:
    runtime = ModelRuntime.load(str(small_model), device="cpu", max_length=16)
    assert runtime.labels == list(THUCNEWS_LABELS)
    assert runtime.version.startswith("small-init-")
    encoded = runtime.encode([("短标题", None), ("一个长得多的新闻标题" * 5, None)])
    assert max(encoded.lengths) == 16  # truncated to max_length
    probs = runtime.predict(runtime.collate(encoded, [0, 1]))
    assert probs.shape == (2, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_padding_does_not_change_a_prediction(small_model: Path) -> None:
    runtime = ModelRuntime.load(str(small_model), device="cpu")
    encoded = runtime.encode([("短标题", None), ("一个长得多的新闻标题，用来填充", None)])
    alone = runtime.predict(runtime.collate(encoded, [0]))
    padded = runtime.predict(runtime.collate(encoded, [0, 1]))
    np.testing.assert_allclose(alone[0], padded[0], atol=1e-5)


def test_huge_content_is_cut_before_tokenizing(small_model: Path) -> None:
    runtime = ModelRuntime.load(str(small_model), device="cpu", max_length=32)
    full = runtime.encode([("标题", "正文" * 50_000)])
    short = runtime.encode([("标题", "正文" * 64)])
    assert row(full, 0) == row(short, 0) and full.lengths == [32]


def test_null_model_tokenizes_for_real_and_answers_uniformly(tokenizer_dir: Path) -> None:
    runtime = ModelRuntime.load("null", tokenizer_dir=str(tokenizer_dir))
    encoded = runtime.encode([("北京房价上涨", None), ("球队", "赢得比赛")])
    assert encoded.lengths == [8, 9]
    probs = runtime.predict(runtime.collate(encoded, [0, 1]))
    assert runtime.version == "null" and runtime.labels[7] == "sports"
    assert probs.shape == (2, 10) and np.allclose(probs, 0.1)


def test_collate_pads_any_rows_in_the_order_asked(tokenizer_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    runtime = ModelRuntime.load("null", tokenizer_dir=str(tokenizer_dir))
    pairs: list[tuple[str, str | None]] = [
        ("北京房价上涨", None),
        ("球队", "赢得比赛"),
        ("一个长得多的新闻标题", None),
    ]
    batch = runtime.collate(runtime.encode(pairs), [2, 0, 1])
    expected = [tokenizer(*pairs[i]) if pairs[i][1] else tokenizer(pairs[i][0]) for i in (2, 0, 1)]
    width = max(len(e["input_ids"]) for e in expected)
    for out, e in enumerate(expected):
        pad = width - len(e["input_ids"])
        assert batch.input_ids[out].tolist() == e["input_ids"] + [tokenizer.pad_token_id] * pad
        assert batch.token_type_ids[out].tolist() == e["token_type_ids"] + [0] * pad
        assert batch.attention_mask[out].tolist() == e["attention_mask"] + [0] * pad


def test_precision_is_fp32_on_a_cpu_unless_asked() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"


def test_bf16_gives_nearly_the_fp32_probabilities(small_model: Path) -> None:
    pairs: list[tuple[str, str | None]] = [
        ("央行宣布下调存款准备金率", None),
        ("球队赢得比赛", None),
        ("北京房价上涨", "正文内容"),
    ]
    fp32 = ModelRuntime.load(str(small_model), device="cpu")
    assert fp32.precision == "fp32"
    expected = fp32.predict(fp32.collate(fp32.encode(pairs), [0, 1, 2]))
    cases: list[tuple[Precision, torch.dtype]] = [
        ("bf16", torch.bfloat16),
        ("bf16-autocast", torch.float32),
    ]
    for precision, weights in cases:
        runtime = ModelRuntime.load(str(small_model), device="cpu", precision=precision)
        assert runtime.precision == precision
        assert next(runtime.model.parameters()).dtype == weights
        probs = runtime.predict(runtime.collate(runtime.encode(pairs), [0, 1, 2]))
        assert probs.dtype == np.float32
        np.testing.assert_allclose(probs, expected, atol=0.02)
        assert not np.allclose(probs, expected, atol=1e-6)  # it did run in bf16


def test_served_weights_need_no_gradients(small_model: Path) -> None:
    runtime = ModelRuntime.load(str(small_model), device="cpu")
    assert not any(p.requires_grad for p in runtime.model.parameters())


@pytest.mark.parametrize("every_row_bucket", [False, True])  # no graphs on a CPU: no buckets
def test_warm_up_runs_one_pass_per_shape(small_model: Path, every_row_bucket: bool) -> None:
    runtime = ModelRuntime.load(str(small_model), device="cpu", max_length=60)
    calls: list[tuple[int, ...]] = []
    predict = runtime.predict

    def counting(batch: TensorBatch) -> np.ndarray:
        calls.append(tuple(batch.input_ids.shape))
        return predict(batch)

    runtime.predict = counting  # type: ignore[method-assign]
    runtime.warm_up([(1, 8), (512, 8), (3, 64)], every_row_bucket=every_row_bucket)
    assert calls == [(1, 8), (512, 8), (3, 64)]


def test_a_runtime_holds_no_reference_cycle(small_model: Path) -> None:
    assert freed_by_reference_count(lambda: warmed(str(small_model), "cpu", [(1, 8)]))
