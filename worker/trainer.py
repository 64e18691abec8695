"""Fine-tuning with the Hugging Face Trainer: warmup, weight decay, evaluation on dev every N
steps, early stopping on dev loss with the best checkpoint restored, TensorBoard logs, and a
test report. No queue or SQL here; the train task wraps it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from producer.contract import TrainRequest
from worker.model_shapes import SHAPES, build_config
from worker.pretrain import pretrain_encoder
from worker.train_data import THUCNEWS_LABELS, LabelledData, read_data, read_labels
from worker.train_metrics import classification_report
from worker.train_plots import plot_confusion, plot_losses
from worker.vocab import trimmed_tokenizer

log = logging.getLogger(__name__)
Progress = Callable[[dict[str, Any]], None]


class TitleDataset(torch.utils.data.Dataset[dict[str, Any]]):
    """Tokenized once up front; padding happens per batch in the collator."""

    def __init__(self, data: LabelledData, tokenizer: Any, max_length: int) -> None:
        self.encodings = tokenizer(data.titles, truncation=True, max_length=max_length)
        self.labels = data.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {key: values[index] for key, values in self.encodings.items()}
        item["labels"] = self.labels[index]
        return item


class ReportProgress(TrainerCallback):
    """Epoch, step, last train loss and last eval loss/accuracy, after each log and eval."""

    def __init__(self, report: Progress) -> None:
        self.report = report
        self.last: dict[str, Any] = {}

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
        logs = logs or {}
        if "loss" in logs:
            self.last["train_loss"] = round(float(logs["loss"]), 4)
        if "eval_loss" in logs:
            self.last["eval_loss"] = round(float(logs["eval_loss"]), 4)
            self.last["eval_accuracy"] = round(float(logs.get("eval_accuracy", 0.0)), 4)
        self.report(
            {
                "epoch": round(float(state.epoch or 0), 2),
                "step": state.global_step,
                "max_steps": state.max_steps,
                **self.last,
            }
        )


@dataclass
class TrainResult:
    model_dir: Path
    labels: list[str]
    best_step: int | None
    best_eval_loss: float | None
    report: dict[str, Any]
    dev_accuracy: float
    restored_eval_loss: float
    eval_history: list[list[float]]
    stopped_at_step: int
    max_steps: int
    train_rows: int
    bad_rows: dict[str, list[tuple[int, str]]]


def build_model(
    request: TrainRequest, labels: list[str], titles: list[str], run_dir: Path
) -> tuple[Any, Any]:
    """A named shape from BertConfig with the real vocab (trimmed to what `titles` use if the
    request says so), or `from_pretrained` (production)."""
    if request.base_model in SHAPES:
        tokenizer = AutoTokenizer.from_pretrained(request.tokenizer)
        config = build_config(request.base_model, request.tokenizer, tuple(labels))
        if request.trim_vocab:
            tokenizer = trimmed_tokenizer(tokenizer, titles, run_dir / "tokenizer")
            config.vocab_size = len(tokenizer)
            config.pad_token_id = tokenizer.pad_token_id
        torch.manual_seed(request.seed)
        return tokenizer, BertForSequenceClassification(config)
    tokenizer = AutoTokenizer.from_pretrained(request.base_model)
    model = AutoModelForSequenceClassification.from_pretrained(
        request.base_model,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )
    return tokenizer, model


def accuracy(prediction: Any) -> dict[str, float]:
    return {
        "accuracy": float(
            (np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean()
        )
    }


def train(request: TrainRequest, run_dir: Path, progress: Progress, version: str) -> TrainResult:
    """Train, evaluate, and save the best model (labelled `version`) to `run_dir/model`."""
    labels = read_labels(request.class_file) if request.class_file else list(THUCNEWS_LABELS)
    columns = {"title_column": request.title_column, "label_column": request.label_column}
    train_data = read_data(request.train_file, labels, **columns)
    dev_data = read_data(request.dev_file, labels, **columns)
    test_data = read_data(request.test_file, labels, **columns) if request.test_file else dev_data
    if request.max_train_samples:
        train_data.titles = train_data.titles[: request.max_train_samples]
        train_data.labels = train_data.labels[: request.max_train_samples]
    tokenizer, model = build_model(request, labels, train_data.titles, run_dir)
    if request.mlm_epochs:
        pretrain_encoder(
            model,
            tokenizer,
            train_data.titles,
            epochs=request.mlm_epochs,
            learning_rate=request.mlm_learning_rate,
            batch_size=request.batch_size,
            max_length=request.max_length,
            seed=request.seed,
            output_dir=run_dir / "pretrain",
            callbacks=[ReportProgress(lambda state: progress({"phase": "pretrain", **state}))],
        )
    datasets = [
        TitleDataset(d, tokenizer, request.max_length) for d in (train_data, dev_data, test_data)
    ]
    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=request.epochs,
        learning_rate=request.learning_rate,
        per_device_train_batch_size=request.batch_size,
        per_device_eval_batch_size=max(request.batch_size, 128),
        # transformers 5: a float below 1 is a ratio of the total steps
        warmup_steps=request.warmup_steps or request.warmup_ratio,
        weight_decay=request.weight_decay,  # the Trainer exempts biases and LayerNorm weights
        label_smoothing_factor=request.label_smoothing,
        lr_scheduler_type="linear",
        eval_strategy="steps",
        eval_steps=request.eval_steps,
        save_strategy="steps",
        save_steps=request.eval_steps,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=max(1, request.eval_steps // 4),
        report_to=["tensorboard"],
        bf16=cuda,
        seed=request.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,  # pinned pages only help a copy to a GPU; torch warns otherwise
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=datasets[0],
        eval_dataset=datasets[1],
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
        callbacks=[
            EarlyStoppingCallback(request.early_stopping_patience),
            ReportProgress(progress),
        ],
    )
    trainer.train()
    state = trainer.state
    best_step = (
        int(Path(state.best_model_checkpoint).name.rsplit("-", 1)[1])
        if state.best_model_checkpoint
        else None
    )
    eval_history = [
        [h["step"], round(float(h["eval_loss"]), 6)] for h in state.log_history if "eval_loss" in h
    ]
    restored = trainer.evaluate()  # the weights now in `model`: the best step's
    predicted = np.argmax(trainer.predict(datasets[2]).predictions, axis=-1)
    report = classification_report(predicted, test_data.labels, labels)

    model_dir = run_dir / "model"
    model.config.newsq_model_version = version  # the best checkpoint was loaded into `model`
    trainer.save_model(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    plot_confusion(report["confusion_matrix"], labels, run_dir / "confusion_matrix.png")
    plot_losses(state.log_history, run_dir / "loss_curves.png")
    return TrainResult(
        model_dir=model_dir,
        labels=labels,
        best_step=best_step,
        best_eval_loss=float(state.best_metric) if state.best_metric is not None else None,
        report=report,
        dev_accuracy=float(restored["eval_accuracy"]),
        restored_eval_loss=float(restored["eval_loss"]),
        eval_history=eval_history,
        stopped_at_step=state.global_step,
        max_steps=state.max_steps,
        train_rows=len(train_data),
        bad_rows={
            "train": train_data.bad_rows,
            "dev": dev_data.bad_rows,
            "test": test_data.bad_rows if request.test_file else [],
        },
    )
