"""The naive baseline of `benchmarks/run`: a Celery worker written the obvious way.

One task per article, one forward pass per article (batch 1), one INSERT and one commit per
article. Prefork, one child per core, each child with one torch thread (the fairest setting of
batch-1 inference on this machine: two threads per child only fight over the same cores).

    NAIVE_BROKER_URL=... NAIVE_DATABASE_URL=... NAIVE_MODEL_DIR=... \
        celery -A benchmarks.naive_worker worker -P prefork -c 2 -Q naive
"""

from __future__ import annotations

import os
from typing import Any

import torch
from celery import Celery
from celery.signals import worker_process_init
from sqlalchemy import create_engine, text
from transformers import AutoModelForSequenceClassification, AutoTokenizer

app = Celery("naive", broker=os.environ.get("NAIVE_BROKER_URL", "redis://127.0.0.1:6379/14"))
app.conf.update(task_default_queue="naive", task_acks_late=True, worker_prefetch_multiplier=4)

TABLE = "naive_predictions"
CREATE_TABLE = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    article_id TEXT PRIMARY KEY, label_id INTEGER NOT NULL, score REAL NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP)"""
loaded: dict[str, Any] = {}


@worker_process_init.connect
def _load(**_: Any) -> None:
    torch.set_num_threads(1)
    model_dir = os.environ["NAIVE_MODEL_DIR"]
    loaded["tokenizer"] = AutoTokenizer.from_pretrained(model_dir)
    loaded["device"] = device = os.environ.get("NAIVE_DEVICE", "cpu")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    loaded["model"] = model.to(device).eval()
    loaded["engine"] = create_engine(
        os.environ["NAIVE_DATABASE_URL"],
        connect_args={"timeout": 60}
        if os.environ["NAIVE_DATABASE_URL"].startswith("sqlite")
        else {},
    )


@app.task(name="naive.classify")
def classify(article_id: str, title: str) -> None:
    inputs = loaded["tokenizer"](title, truncation=True, max_length=64, return_tensors="pt")
    inputs = inputs.to(loaded["device"])
    with torch.inference_mode():
        probs = loaded["model"](**inputs).logits.softmax(-1)[0]
    label = int(probs.argmax())
    with loaded["engine"].begin() as conn:
        conn.execute(
            text(f"INSERT INTO {TABLE} (article_id, label_id, score) VALUES (:a, :l, :s)"),
            {"a": article_id, "l": label, "s": float(probs[label])},
        )
