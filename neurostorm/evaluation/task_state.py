"""A linear decoder of task state on masked voxels, cross-validated leave-one-run-out.

The plain baseline every task-state model must beat: clips (from :mod:`neurostorm.data.events`) averaged
over their frames, logistic regression trained on all runs but one and tested on it.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix

from neurostorm.evaluation.metrics import bootstrap


def clip_features(frames: np.ndarray, clips: list[tuple[int, str]], length: int) -> np.ndarray:
    """Mean over each clip's frames of (T, V) masked voxels → (n_clips, V)."""
    return np.stack([frames[s:s + length].mean(axis=0) for s, _ in clips])


def leave_one_run_out(features: np.ndarray, labels: np.ndarray, runs: np.ndarray, c: float = 0.1,
                      seed: int = 0) -> dict:
    """Logistic regression trained on all runs but one, tested on it, for every run; accuracy with a
    bootstrap 95 % CI over the held-out clips, chance (1 / classes) and the confusion matrix."""
    classes = np.unique(labels)
    predicted = np.empty(len(labels), dtype=object)
    for run in np.unique(runs):
        test = runs == run
        model = LogisticRegression(C=c, max_iter=5000).fit(features[~test], labels[~test])
        predicted[test] = model.predict(features[test])
    hits = predicted == labels
    result = bootstrap(lambda idx: {"accuracy": float(hits[idx].mean())}, len(hits), seed=seed)
    result["chance"] = 1.0 / len(classes)
    result["per_run"] = {str(r): float(accuracy_score(labels[runs == r], predicted[runs == r]))
                         for r in np.unique(runs)}
    result["classes"] = classes.tolist()
    result["confusion"] = confusion_matrix(labels, predicted.astype(labels.dtype), labels=classes).tolist()
    return result
