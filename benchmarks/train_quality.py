"""Training quality: the small config trained from scratch on THUCNews vs a TF-IDF + LinearSVC
baseline, on the same split, measured in the same run.

    .venv/bin/python benchmarks/train_quality.py --mlm-epochs 2 --epochs 6

Writes a markdown table to stdout and JSON to benchmarks/results/train_quality.json.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.svm import LinearSVC

from producer.contract import TrainRequest
from worker.train_data import THUCNEWS_LABELS, read_data
from worker.trainer import train

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data/thucnews"


def baseline(train_file: Path, test_file: Path) -> tuple[float, float]:
    """TF-IDF on character 1-3-grams + LinearSVC: test accuracy and seconds."""
    labels = list(THUCNEWS_LABELS)
    started = time.perf_counter()
    train_data, test_data = read_data(train_file, labels), read_data(test_file, labels)
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)
    classifier = LinearSVC().fit(vectorizer.fit_transform(train_data.titles), train_data.labels)
    predicted = classifier.predict(vectorizer.transform(test_data.titles))
    accuracy = float((predicted == test_data.labels).mean())
    return accuracy, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--tokenizer", default=str(ROOT.parent / "shared/data/bert-base-chinese"))
    parser.add_argument("--epochs", type=float, default=6)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mlm-epochs", type=float, default=0)
    parser.add_argument("--mlm-learning-rate", type=float, default=5e-4)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--trim-vocab", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--eval-steps", type=int, default=350)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--output", type=Path, default=ROOT / "runs/quality")
    args = parser.parse_args()

    base_accuracy, base_seconds = baseline(args.data / "train.txt", args.data / "test.txt")
    print(f"baseline TF-IDF + LinearSVC: {base_accuracy:.4f} in {base_seconds:.0f}s", flush=True)
    request = TrainRequest(
        train_file=str(args.data / "train.txt"),
        dev_file=str(args.data / "dev.txt"),
        test_file=str(args.data / "test.txt"),
        tokenizer=args.tokenizer,
        base_model="small",
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        mlm_epochs=args.mlm_epochs,
        mlm_learning_rate=args.mlm_learning_rate,
        label_smoothing=args.label_smoothing,
        trim_vocab=args.trim_vocab,
        eval_steps=args.eval_steps,
        early_stopping_patience=args.patience,
        max_train_samples=args.max_train_samples,
    )
    run_dir = args.output / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    started = time.perf_counter()

    def progress(state: dict[str, Any]) -> None:
        if "eval_loss" in state:
            print(f"  {time.perf_counter() - started:6.0f}s {state}", flush=True)

    result = train(request, run_dir, progress, version=f"quality-{run_dir.name}")
    seconds = time.perf_counter() - started
    report = result.report
    summary = {
        "command": "python benchmarks/train_quality.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k
            in (
                "epochs",
                "learning_rate",
                "batch_size",
                "mlm_epochs",
                "mlm_learning_rate",
                "label_smoothing",
                "eval_steps",
                "patience",
            )
            and v is not None
        ),
        "small_model_test_accuracy": round(report["accuracy"], 4),
        "small_model_macro_f1": round(report["macro_f1"], 4),
        "small_model_minutes": round(seconds / 60, 1),
        "best_step": result.best_step,
        "stopped_at_step": result.stopped_at_step,
        "baseline_tfidf_linearsvc_accuracy": round(base_accuracy, 4),
        "baseline_seconds": round(base_seconds, 1),
        "trim_vocab": args.trim_vocab,
        "ratio_to_baseline": round(report["accuracy"] / base_accuracy, 4),
        "run_dir": str(run_dir),
    }
    out = ROOT / "benchmarks/results/train_quality.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print("| model | test accuracy | macro F1 | time |\n|---|---|---|---|")
    print(
        f"| small BERT from scratch (newsq) | {report['accuracy']:.4f} | "
        f"{report['macro_f1']:.4f} | {seconds / 60:.1f} min |"
    )
    print(f"| TF-IDF char 1-3 + LinearSVC | {base_accuracy:.4f} | - | {base_seconds:.0f} s |")


if __name__ == "__main__":
    main()
