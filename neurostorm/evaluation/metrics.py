"""Metrics per subject with bootstrap confidence intervals.

Evaluation is per subject: the logits (or predictions) of all clips of a subject are averaged first, then
metrics are computed over subjects, and their 95 % confidence intervals come from resampling subjects
with replacement (percentile bootstrap, seeded).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.stats import rankdata


def per_subject(subjects: np.ndarray, outputs: np.ndarray, targets: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average the clip outputs (N, K) of each subject; its target must be the same for all its clips."""
    frame = pd.DataFrame({"subject": np.asarray(subjects).astype(str)})
    ids = np.asarray(sorted(frame["subject"].unique()))
    position = {s: i for i, s in enumerate(ids)}
    rows = frame["subject"].map(position).to_numpy()
    outputs = np.asarray(outputs, dtype=np.float64).reshape(len(rows), -1)
    sums = np.zeros((len(ids), outputs.shape[1]))
    np.add.at(sums, rows, outputs)
    counts = np.bincount(rows, minlength=len(ids))[:, None]
    first = np.full(len(ids), -1)
    for i, r in enumerate(rows):
        if first[r] < 0:
            first[r] = i
    return ids, sums / counts, np.asarray(targets)[first]


def probabilities(logits: np.ndarray) -> np.ndarray:
    """(N, 1) binary logits → (N, 2) probabilities by sigmoid; (N, K) → softmax."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        return np.stack([1 - p, p], axis=1)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def classification_metrics(logits: np.ndarray, targets: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1 and AUROC (binary, or macro one-vs-rest) from logits.

    Computed from the confusion matrix and ranks in NumPy (the bootstrap calls this a thousand times);
    the values equal scikit-learn's (a test checks)."""
    prob = probabilities(logits)
    predicted = prob.argmax(axis=1)
    targets = np.asarray(targets).astype(int)
    confusion = np.bincount(targets * n_classes + predicted, minlength=n_classes**2).reshape(n_classes, n_classes)
    hits, true_counts, predicted_counts = np.diag(confusion), confusion.sum(1), confusion.sum(0)
    present = true_counts > 0
    recall = np.divide(hits, true_counts, out=np.zeros(n_classes), where=present)
    precision = np.divide(hits, predicted_counts, out=np.zeros(n_classes), where=predicted_counts > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n_classes), where=precision + recall > 0)
    out = {"accuracy": hits.sum() / len(targets), "balanced_accuracy": recall[present].mean(), "f1_macro": f1.mean()}
    if present.all():
        positives = [1] if n_classes == 2 else range(n_classes)
        out["auroc"] = np.mean([_auroc(targets == k, prob[:, k]) for k in positives])
    return {k: float(v) for k, v in out.items()}


def _auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic (ties count one half)."""
    ranks = rankdata(scores)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    return (ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def regression_metrics(predicted: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """MSE, MAE and Pearson r in the targets' own units."""
    predicted, targets = np.asarray(predicted, float).ravel(), np.asarray(targets, float).ravel()
    r = np.corrcoef(predicted, targets)[0, 1] if predicted.std() > 0 and targets.std() > 0 else 0.0
    return {"mse": float(np.mean((predicted - targets) ** 2)), "mae": float(np.mean(np.abs(predicted - targets))),
            "pearson_r": float(r)}


def bootstrap(metric_fn: Callable[[np.ndarray], dict[str, float]], n_items: int, n_boot: int = 1000,
              seed: int = 0, level: float = 0.95) -> dict[str, dict[str, float]]:
    """``metric_fn(indices)`` on all items and on ``n_boot`` resamples → {metric: {value, ci_low, ci_high}}.

    Resamples where a metric is undefined (e.g. AUROC with one class drawn) are skipped for that metric.
    """
    point = metric_fn(np.arange(n_items))
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n_boot):
        values = metric_fn(rng.integers(0, n_items, n_items))
        for k, v in values.items():
            if k in draws and np.isfinite(v):
                draws[k].append(v)
    tail = 100 * (1 - level) / 2
    return {k: {"value": float(v),
                "ci_low": float(np.percentile(draws[k], tail)) if draws[k] else float("nan"),
                "ci_high": float(np.percentile(draws[k], 100 - tail)) if draws[k] else float("nan")}
            for k, v in point.items()}


def chance_level(targets: np.ndarray, n_classes: int) -> dict[str, float]:
    """What guessing achieves: accuracy of always predicting the majority class, balanced accuracy 1/K."""
    counts = np.bincount(np.asarray(targets).astype(int), minlength=n_classes)
    return {"accuracy": float(counts.max() / counts.sum()), "balanced_accuracy": 1.0 / n_classes, "auroc": 0.5}
