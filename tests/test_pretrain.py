"""Masked-LM pretraining moves the encoder and leaves the classifier head to fine-tuning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, BertForSequenceClassification

from tests.conftest import TOKENIZER_DIR
from worker.model_shapes import build_config
from worker.pretrain import pretrain_encoder


# A warning here would repeat in the log of every training run (e.g. pinned memory without a GPU).
@pytest.mark.filterwarnings("error::UserWarning")
def test_mlm_pretraining_updates_the_encoder_only(tmp_path: Path) -> None:
    titles = [
        line.split("\t")[0]
        for line in (TOKENIZER_DIR.parent / "thucnews/train.txt")
        .read_text(encoding="utf-8")
        .splitlines()[:96]
    ]
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    torch.manual_seed(0)
    model: Any = BertForSequenceClassification(build_config("small", TOKENIZER_DIR))
    embeddings = model.bert.embeddings.word_embeddings.weight.detach().clone()
    layer = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    head = model.classifier.weight.detach().clone()
    pretrain_encoder(
        model,
        tokenizer,
        titles,
        epochs=1,
        learning_rate=1e-3,
        batch_size=32,
        max_length=32,
        seed=0,
        output_dir=tmp_path,
    )
    assert not torch.equal(embeddings, model.bert.embeddings.word_embeddings.weight)
    assert not torch.equal(layer, model.bert.encoder.layer[0].attention.self.query.weight)
    assert torch.equal(head, model.classifier.weight)
