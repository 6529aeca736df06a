"""From per-clip predictions to per-subject metrics with 95 % bootstrap CIs, per site and paired."""

from __future__ import annotations

import numpy as np
import pandas as pd

from neurostorm.evaluation.metrics import (
    bootstrap,
    chance_level,
    classification_metrics,
    per_subject,
    probabilities,
    regression_metrics,
)
from neurostorm.evaluation.target import Target

UNDEFINED = {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}  # a metric with no value


def scored_units(target: Target, subjects: np.ndarray, outputs: np.ndarray, targets: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What metrics are computed over: subjects (clip outputs averaged per subject) for subject labels, or
    clips for a per-clip target, whose label changes within a subject. Returns (subject of each unit, outputs,
    y)."""
    if target.per_clip:
        return np.asarray(subjects).astype(str), np.asarray(outputs, dtype=np.float64), np.asarray(targets)
    return per_subject(subjects, outputs, targets)


def unit_metrics(target: Target, n_classes: int, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    if target.values:
        return regression_metrics(outputs[:, 0], targets)
    return classification_metrics(outputs, targets, n_classes)


def subject_metrics(target: Target, n_classes: int, subjects: np.ndarray, outputs: np.ndarray, targets: np.ndarray
                    ) -> dict[str, float]:
    """Point metrics over the scored units (subjects, or clips of a per-clip target)."""
    _, out, y = scored_units(target, subjects, outputs, targets)
    return unit_metrics(target, n_classes, out, y)


def predictions_frame(subjects, run_ids, starts, outputs: np.ndarray, targets: np.ndarray) -> pd.DataFrame:
    """One row per clip: subject, run_id, start, y and output columns out_0..out_{K-1}."""
    frame = pd.DataFrame({"subject": np.asarray(subjects).astype(str), "run_id": run_ids, "start": starts,
                          "y": targets})
    for k in range(outputs.shape[1]):
        frame[f"out_{k}"] = outputs[:, k]
    return frame


class ScoredUnits:
    """The scored units of a predictions frame (subjects, or clips of a per-clip target), grouped by subject
    so that a bootstrap resample of subjects takes all their units."""

    def __init__(self, target: Target, n_classes: int, frame: pd.DataFrame) -> None:
        outputs = frame[[c for c in frame.columns if c.startswith("out_")]].to_numpy()
        owners, self.outputs, self.y = scored_units(target, frame["subject"].to_numpy(), outputs,
                                                    frame["y"].to_numpy())
        self.target, self.n_classes, self.subjects = target, n_classes, np.unique(owners)
        self.units_of = {s: np.flatnonzero(owners == s) for s in self.subjects}

    def metrics(self, subjects: np.ndarray) -> dict[str, float]:
        """Point metrics over the units of ``subjects`` (repeats allowed); {} where undefined (one class)."""
        rows = np.concatenate([self.units_of[s] for s in subjects])
        if not self.target.values and len(np.unique(self.y[rows])) < 2:
            return {}
        return unit_metrics(self.target, self.n_classes, self.outputs[rows], self.y[rows])


def metrics_with_ci(target: Target, n_classes: int, frame: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict:
    """{metric: {value, ci_low, ci_high}}, the CI from resampling subjects (with all their scored units),
    plus chance levels for classification."""
    units = ScoredUnits(target, n_classes, frame)
    result = bootstrap(lambda idx: units.metrics(units.subjects[idx]), len(units.subjects), n_boot=n_boot,
                       seed=seed)
    result["n_subjects"] = int(len(units.subjects))
    result["n_clips"] = int(len(frame))
    if not target.values:
        result["chance"] = chance_level(units.y, n_classes)
        decided = probabilities(units.outputs).argmax(1)
        if len(np.unique(units.y)) > 1 and len(np.unique(decided)) == 1:
            result["note"] = (f"every test {target.unit} is decided as class "
                              f"{int(decided[0])}: balanced accuracy is at chance by construction while AUROC only "
                              "ranks the scores; the decision threshold lies outside their range (e.g. a strongly "
                              "regularised model that predicts the training prior)")
    return result


def per_site(target: Target, n_classes: int, frame: pd.DataFrame, site_of: dict[str, str]) -> dict[str, dict]:
    """:func:`metrics_with_ci` of the test subjects of each site (``site_of``: subject → site)."""
    sites = frame["subject"].astype(str).map(site_of).fillna("unknown")
    return {str(site): metrics_with_ci(target, n_classes, part) for site, part in frame.groupby(sites)}


def paired_difference(target: Target, n_classes: int, frame_a: pd.DataFrame, frame_b: pd.DataFrame, metric: str,
                      n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """``metric`` of A minus that of B on the same test subjects, {value, ci_low, ci_high}: each bootstrap
    draw resamples subjects once and scores both methods on that draw (a paired bootstrap)."""
    a, b = ScoredUnits(target, n_classes, frame_a), ScoredUnits(target, n_classes, frame_b)
    if not np.array_equal(a.subjects, b.subjects):
        raise ValueError("paired difference needs the same test subjects in both prediction tables")

    def difference(idx: np.ndarray) -> dict[str, float]:
        first, second = a.metrics(a.subjects[idx]), b.metrics(a.subjects[idx])
        return {metric: first[metric] - second[metric]} if metric in first and metric in second else {}

    return bootstrap(difference, len(a.subjects), n_boot=n_boot, seed=seed).get(metric, dict(UNDEFINED))
