"""Masked-language-model pretraining of the encoder on the training titles, before fine-tuning.

Offline there are no pretrained weights: a model built from a config knows nothing of Chinese.
A few epochs of MLM on the titles themselves teach the encoder which characters go together,
and the classifier then starts from that encoder instead of from noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    BertForMaskedLM,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)


class Titles(torch.utils.data.Dataset[dict[str, Any]]):
    def __init__(self, titles: list[str], tokenizer: Any, max_length: int) -> None:
        self.encodings = tokenizer(titles, truncation=True, max_length=max_length)

    def __len__(self) -> int:
        return len(self.encodings["input_ids"])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {key: values[index] for key, values in self.encodings.items()}


def pretrain_encoder(
    model: Any,
    tokenizer: Any,
    titles: list[str],
    *,
    epochs: float,
    learning_rate: float,
    batch_size: int,
    max_length: int,
    seed: int,
    output_dir: Path,
    callbacks: list[TrainerCallback] | None = None,
) -> None:
    """Train a masked-LM twin of `model` on `titles`, then copy its encoder into `model`
    (embeddings and layers; the classifier's pooler and head stay as they are)."""
    mlm = BertForMaskedLM(model.config)
    mlm.bert.load_state_dict(model.bert.state_dict(), strict=False)
    args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        warmup_steps=0.06,
        weight_decay=0.01,
        lr_scheduler_type="linear",
        save_strategy="no",
        logging_steps=100,
        report_to=["tensorboard"],
        bf16=torch.cuda.is_available(),
        dataloader_pin_memory=torch.cuda.is_available(),  # else torch warns on every loader
        seed=seed,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=mlm,
        args=args,
        train_dataset=Titles(titles, tokenizer, max_length),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
        callbacks=callbacks or [],
    )
    trainer.train()
    missing, _ = model.bert.load_state_dict(mlm.bert.state_dict(), strict=False)
    assert all(name.startswith("pooler.") for name in missing), missing
