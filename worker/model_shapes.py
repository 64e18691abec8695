"""Named model shapes and a randomly initialised model of one, for tests and demos.

The real tokenizer and base config come from a local folder (the bert-base-chinese hub layout),
so a small model built here tokenizes exactly like the production one.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

from worker.train_data import THUCNEWS_LABELS

SHAPES: dict[str, dict[str, Any]] = {
    "small": {
        "num_hidden_layers": 4,
        "hidden_size": 256,
        "num_attention_heads": 4,
        "intermediate_size": 1024,
        "max_position_embeddings": 512,
    },
    "base": {},  # the bert-base-chinese config as it is: 12 layers, hidden 768
}


def build_config(
    shape: str, tokenizer_dir: str | Path, labels: tuple[str, ...] = THUCNEWS_LABELS
) -> Any:
    if shape not in SHAPES:
        raise ValueError(f"unknown model shape {shape!r}; choose one of {', '.join(SHAPES)}")
    return AutoConfig.from_pretrained(
        str(tokenizer_dir),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        **SHAPES[shape],
    )


def init_model(
    shape: str,
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    labels: tuple[str, ...] = THUCNEWS_LABELS,
    seed: int = 0,
) -> str:
    """Write an untrained classifier of `shape` plus the real tokenizer to `out_dir`.

    Returns the version label written into its config.
    """
    # AutoTokenizer.from_pretrained reads vocab.txt properly; the vocab_file= constructors of
    # transformers 5 silently build a 5-token vocabulary instead.
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = build_config(shape, tokenizer_dir, labels)
    config.newsq_model_version = f"{shape}-init-{secrets.token_hex(4)}"
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(config.newsq_model_version)
