"""Evaluation metrics of a classifier, in one function (scikit-learn does the arithmetic)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


def classification_report(
    predicted: Sequence[int] | np.ndarray, actual: Sequence[int] | np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, a per-class table and the confusion matrix
    (rows: actual label, columns: predicted), all JSON-ready."""
    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        actual, predicted, labels=ids, zero_division=0
    )
    macro = precision_recall_fscore_support(
        actual, predicted, labels=ids, average="macro", zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(actual, predicted)),
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "macro_f1": float(macro[2]),
        "per_class": [
            {
                "label": labels[i],
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in ids
        ],
        "confusion_matrix": confusion_matrix(actual, predicted, labels=ids).tolist(),
    }
